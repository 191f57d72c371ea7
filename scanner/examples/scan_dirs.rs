//! Prints the findings (MEDIUM and above) of each skill folder given.
fn main() {
    let Ok(engine) = defenseclaw_scanner::Engine::builtin() else {
        return;
    };
    for d in std::env::args().skip(1) {
        match engine.scan_skill(std::path::Path::new(&d)) {
            Ok(r) => {
                println!("{d}: {:?}", r.max_severity);
                for f in r
                    .findings
                    .iter()
                    .filter(|f| f.severity >= defenseclaw_scanner::Severity::Medium)
                {
                    println!(
                        "  {} {} {}:{} {}",
                        f.severity, f.rule_id, f.location, f.line, f.snippet
                    );
                    if f.rule_id.starts_with("DC-FL") || f.rule_id.starts_with("DC-IN") {
                        println!("      {}", f.description);
                    }
                }
            }
            Err(e) => println!("{d}: error {e}"),
        }
    }
}
