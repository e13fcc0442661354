//! Compiles the `.proto` files with `protox` (pure Rust, no system `protoc`) and
//! generates the tonic client and server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/brandkms/v1/admin.proto",
        "proto/brandkms/v1/distribution.proto",
        "proto/brandkms/v1/card.proto",
        "proto/brandkms/v1/settlement.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("brandkms_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        // Bounds on every request field; decoding failures are the caller's.
        .codec_path("crate::limits::BoundedCodec")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
