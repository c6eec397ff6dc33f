//! `invoices-api [--listen ADDR] [--name NAME]`: serves the example API
//! (default `127.0.0.1:3000`, name `invoices-api`; env `INVOICES_API_LISTEN`,
//! `INVOICES_API_NAME`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut listen =
        std::env::var("INVOICES_API_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let mut name = std::env::var("INVOICES_API_NAME").unwrap_or_else(|_| "invoices-api".into());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let target = match arg.as_str() {
            "--listen" => &mut listen,
            "--name" => &mut name,
            _ => {
                eprintln!("usage: invoices-api [--listen ADDR] [--name NAME]");
                return ExitCode::from(2);
            }
        };
        match args.next() {
            Some(v) => *target = v,
            None => {
                eprintln!("{arg} needs a value");
                return ExitCode::from(2);
            }
        }
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("invoices-api ({name}) listening on {listen}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let signal = async {
        tokio::select! {
            _ = shutdown => {},
            _ = terminate => {},
        }
    };
    match axum::serve(listener, invoices_api::app_named(&name))
        .with_graceful_shutdown(signal)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("invoices-api: {e}");
            ExitCode::FAILURE
        }
    }
}
