//! `waybill-host up` serves a Spin app; `waybill-host cron <component>` fires one event.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "waybill-host",
    about = "Run a Spin app on wasmtime without a Spin binary",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct AppArgs {
    /// The application manifest.
    #[arg(short = 'f', long = "from", default_value = "spin.toml")]
    manifest: PathBuf,
    /// Where the key-value and SQLite files live (default: .spin/ next to spin.toml).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Set an application variable: name=value (repeatable).
    #[arg(long = "variable", value_name = "NAME=VALUE")]
    variables: Vec<String>,
    /// SQL run against the default database before serving; `@file.sql` reads a file (repeatable).
    #[arg(long = "sqlite", value_name = "SQL|@FILE")]
    sqlite: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the app's HTTP routes and run its cron schedules.
    Up {
        #[command(flatten)]
        app: AppArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// Do not print a line per request.
        #[arg(long)]
        quiet: bool,
        /// Run no cron schedules: a replica beside another that runs them, or
        /// a platform without cron triggers (containerd-shim-spin), where
        /// `POST /api/maintenance/{schedule}` does the scheduled work.
        #[arg(long)]
        no_cron: bool,
    },
    /// Fire one cron event at a component now, then exit.
    Cron {
        component: String,
        #[command(flatten)]
        app: AppArgs,
    },
}

fn builder(a: &AppArgs) -> Result<waybill_host::AppBuilder> {
    let state_dir = match &a.state_dir {
        Some(d) => d.clone(),
        None => a
            .manifest
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(std::path::Path::new("."))
            .join(".spin"),
    };
    let mut b = waybill_host::App::builder(&a.manifest)
        .state_dir(state_dir)
        .process_env();
    for v in &a.variables {
        let Some((k, val)) = v.split_once('=') else {
            bail!("--variable {v}: expected NAME=VALUE");
        };
        b = b.variable(k, val);
    }
    for s in &a.sqlite {
        let sql = match s.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("--sqlite @{path}"))?
            }
            None => s.clone(),
        };
        b = b.sqlite_statement(sql);
    }
    Ok(b)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Up {
            app,
            listen,
            quiet,
            no_cron,
        } => {
            let running = builder(&app)?
                .listen(listen)
                .log_requests(!quiet)
                .schedules(!no_cron)
                .start()
                .await?;
            eprintln!("Serving http://{}", running.addr);
            for t in &running.app.manifest.http {
                let route = match &t.route {
                    waybill_host::manifest::Route::Path(p) => {
                        format!("http://{}{}", running.addr, p)
                    }
                    waybill_host::manifest::Route::Private => "(private)".to_string(),
                };
                eprintln!(
                    "  {}: {route}",
                    t.component().unwrap_or("(static response)")
                );
            }
            for t in &running.app.manifest.cron {
                let off = if no_cron { " (not run: --no-cron)" } else { "" };
                eprintln!("  {}: cron '{}'{off}", t.component, t.cron_expression);
            }
            tokio::signal::ctrl_c().await?;
            running.stop().await;
            Ok(())
        }
        Cmd::Cron { component, app } => {
            let running = builder(&app)?.start().await?;
            let r = running.fire_cron(&component).await;
            running.stop().await;
            r
        }
    }
}
