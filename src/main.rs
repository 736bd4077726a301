//! The `meshkv` binary: everything lives in the library; see `meshkv::cli`.

fn main() -> std::process::ExitCode {
    meshkv::cli::main()
}
