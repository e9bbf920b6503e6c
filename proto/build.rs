//! Compiles `estate/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["estate/v1/report.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        // Messages are plain data: both sides render them as JSON (the agent's
        // `once --json`, the collector's stored inventory and API).
        .message_attribute(
            ".estate.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .field_attribute(
            ".estate.v1.CheckResult.outcome",
            "#[serde(with = \"crate::outcome_as_name\")]",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
