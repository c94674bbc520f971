//! Ground-truth throughput: generates the rows and brute-forces exact top-k for a query set.
//!
//! Defaults to 1M rows × 768 dims × 100 queries, k = 10, L2, normalised normal vectors, all
//! cores. STAMPEDE_GT_ROWS / STAMPEDE_GT_DIM / STAMPEDE_GT_QUERIES / STAMPEDE_GT_THREADS change
//! the size. Run with `cargo bench --bench ground_truth`.

use std::time::Instant;

use stampede::data::{Metric, VectorDistribution, VectorGenerator, ground_truth};

/// Reads a numeric environment variable, falling back to `default` when unset or malformed.
fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("ignoring {name}={v:?}: not a number");
            default
        }),
        Err(_) => default,
    }
}

fn main() {
    let rows = env_or("STAMPEDE_GT_ROWS", 1_000_000);
    let dim = env_or("STAMPEDE_GT_DIM", 768) as usize;
    let nq = env_or("STAMPEDE_GT_QUERIES", 100) as usize;
    let threads = env_or("STAMPEDE_GT_THREADS", 0) as usize;
    let top_k = 10;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let used = if threads == 0 { cores } else { threads };

    let data = VectorGenerator::new(dim, VectorDistribution::Normal, true, 42);
    let queries = data.queries(nq);

    // Generation alone, on one thread, to show how the time splits.
    let sample = rows.min(50_000);
    let started = Instant::now();
    let mut buf = vec![0f32; dim * 1024];
    let mut done = 0;
    while done < sample {
        let n = (sample - done).min(1024) as usize;
        data.fill_rows(done, &mut buf[..n * dim]);
        done += n as u64;
    }
    let gen_rate = sample as f64 / started.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(&buf);

    let started = Instant::now();
    let truth = ground_truth(&data, rows, &queries, top_k, Metric::L2, threads, &|_| {});
    let secs = started.elapsed().as_secs_f64();

    println!(
        "ground truth: {rows} rows × {dim} dims × {nq} queries, k={top_k}, L2, normal+normalize, \
         {used} threads"
    );
    println!(
        "  generation + ground truth: {secs:.2} s, {:.0} rows/s ({:.2} G distance terms/s)",
        rows as f64 / secs,
        rows as f64 * nq as f64 * dim as f64 / secs / 1e9
    );
    println!("  generation alone (1 thread): {gen_rate:.0} rows/s");
    if let (Some(ids), Some(d)) = (truth.ids.first(), truth.distances.first()) {
        println!("  query 0: ids {ids:?}");
        println!("  query 0: distances {d:?}");
    }
}
