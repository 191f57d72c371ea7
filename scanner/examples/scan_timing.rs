//! Times engine build and two passes over a folder of skills (cold, warm).
fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let t = std::time::Instant::now();
    let Ok(engine) = defenseclaw_scanner::Engine::builtin() else {
        return;
    };
    println!("build {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.sort();
    for pass in 0..3 {
        let t = std::time::Instant::now();
        let mut n = 0;
        for d in &dirs {
            if engine.scan_skill(d).is_ok() {
                n += 1;
            }
        }
        println!(
            "pass {pass}: {n} skills sequential {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}
