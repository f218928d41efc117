//! Generates the ECU interface's Rust code from its published `.proto`.

fn main() {
    let proto = "../dbus-interfaces/rota-ecu-v1.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../dbus-interfaces"]).expect("rota-ecu-v1.proto compiles");
    tonic_prost_build::configure().compile_fds(fds).expect("code for rota-ecu-v1.proto");
}
