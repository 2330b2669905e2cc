//! The `kubelet-guard` binary: parses the command line, sets up logging and
//! the crypto provider, and runs the chosen command.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use cli::{CertsCommand, Cli, Command};

// jemalloc with background purging: after a peak of connections the freed
// memory goes back to the system within seconds, idle or not
// (bench/PROFILE.md, "Memory after a peak").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // The matches are kept: `serve` lays only the flags actually given over
    // its config file.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // One crypto provider for every TLS stack in the process, the kube
    // client's included.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Serve(_) => match matches.subcommand() {
            Some(("serve", flags)) => cli::serve(flags),
            _ => unreachable!("clap parsed the serve subcommand"),
        },
        Command::Explain(args) => cli::explain::run(&args),
        Command::Certs {
            command:
                CertsCommand::Dev {
                    out,
                    node_name,
                    ips,
                    dns_names,
                },
        } => cli::certs_dev(out, node_name, ips, dns_names),
        Command::Certs {
            command:
                CertsCommand::Sign {
                    ca_cert,
                    ca_key,
                    csr,
                    duration,
                },
        } => cli::certs_sign(&ca_cert, &ca_key, &csr, duration.0),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe_error(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message before it already includes (our errors name their cause).
fn describe_error(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}
