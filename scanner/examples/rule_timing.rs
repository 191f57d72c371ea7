//! Prints how long each rule's patterns take to compile (slowest first).
fn main() {
    let rules = match defenseclaw_scanner::rules::builtin_rules() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let mut times = Vec::new();
    for r in &rules {
        for p in r.patterns.iter().chain(&r.requires) {
            let src = if r.case_sensitive {
                format!("(?m){p}")
            } else {
                format!("(?mi){p}")
            };
            let t = std::time::Instant::now();
            let ok = regex::bytes::RegexBuilder::new(&src)
                .unicode(false)
                .size_limit(64 << 20)
                .build()
                .is_ok();
            times.push((
                t.elapsed().as_secs_f64() * 1000.0,
                r.id.clone(),
                ok,
                p.chars().take(60).collect::<String>(),
            ));
        }
    }
    times.sort_by(|a, b| b.0.total_cmp(&a.0));
    for t in times.iter().take(15) {
        println!("{:8.2} ms {} {} {}", t.0, t.1, t.2, t.3);
    }
    let t = std::time::Instant::now();
    let e = defenseclaw_scanner::Engine::builtin();
    println!(
        "engine {:.1} ms ok={}",
        t.elapsed().as_secs_f64() * 1000.0,
        e.is_ok()
    );
}
