//! `kgbench`: the tools behind `bench/run`. See bench/README.md.

mod body;
mod bulk;
mod burst;
mod client;
mod fakeapi;
mod server;
mod streams;
mod tls;
mod upstream;
mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kgbench", about = "kubelet-guard benchmark tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The stand-in kubelet (plain and/or TLS).
    Upstream(upstream::Args),
    /// A fake apiserver that allows and counts SubjectAccessReviews.
    Fakeapi(fakeapi::Args),
    /// Hold many idle upgraded streams open through a target.
    Streams(streams::Args),
    /// Time one bulk stream through a target.
    Bulk(bulk::Args),
    /// Many concurrent first requests from one identity.
    Burst(burst::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tls::install_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kgbench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Upstream(args) => upstream::run(args).await,
            Command::Fakeapi(args) => fakeapi::run(args).await,
            Command::Streams(args) => streams::run(args).await,
            Command::Bulk(args) => bulk::run(args).await,
            Command::Burst(args) => burst::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kgbench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
