//! Runs one stand-in store of the fairness tests in the foreground, to try
//! `meshkv test` by hand against a store that is not meshkv.
//!
//! ```sh
//! cargo run --example standin -- shared 4      # or: isolated, majority-only
//! ```
//!
//! It prints the cluster file (ids and HTTP addresses only, no `peer`) and the fault
//! arguments to pass to `meshkv test`, then serves until Ctrl-C. See
//! tests/common/standins.rs for what each kind does.

#[path = "../tests/common/standins.rs"]
mod standins;

use std::process::ExitCode;

use standins::{Kind, StandIn};

const USAGE: &str = "usage: cargo run --example standin -- isolated|shared|majority-only [NODES]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = match args.first().map(String::as_str) {
        Some("isolated") => Kind::Isolated,
        Some("shared") => Kind::Shared,
        Some("majority-only") => Kind::MajorityOnly,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let nodes = match args.get(1).map(|n| n.parse::<usize>()) {
        None => 4,
        Some(Ok(n)) if (1..=9).contains(&n) => n,
        Some(_) => {
            eprintln!("{USAGE} (NODES from 1 to 9)");
            return ExitCode::from(2);
        }
    };
    let store = StandIn::start(kind, nodes).await;
    let quoted: Vec<String> = store
        .fault_args()
        .iter()
        .map(|arg| {
            if arg.starts_with("--") {
                arg.clone()
            } else {
                format!("'{arg}'")
            }
        })
        .collect();
    println!("stand-in {kind:?} with {nodes} front ends; cluster file:");
    println!("{}", store.cluster_file().display());
    println!("\nfault arguments for meshkv test:\n{}", quoted.join(" "));
    println!("\nserving until Ctrl-C");
    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {error}");
        return ExitCode::from(1);
    }
    drop(store);
    ExitCode::SUCCESS
}
