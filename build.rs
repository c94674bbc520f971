//! Compiles `proto/` with protox (pure Rust, no system protoc) and generates tonic clients.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/milvus/milvus.proto",
        "proto/stampede/v1/worker.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The generated `connect(dst)` would clash with the Connect RPC; we build channels ourselves.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
