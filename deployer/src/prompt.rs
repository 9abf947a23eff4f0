//! The reference's confirmation prompts (click's `[y/N]`, default no). As click, an input
//! that ends before an answer (no terminal, `</dev/null` in a script) aborts the command with
//! `Aborted!` and exit 1, whatever kind the prompt is; only an answer counts as "no".

use crate::repo::Result;
use std::io::{BufRead, Write};

fn ask(question: &str) -> Result<bool> {
    print!("{question} [y/N]: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    match std::io::stdin().lock().read_line(&mut answer) {
        Ok(0) | Err(_) => Err(aborted()),
        Ok(_) => Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")),
    }
}

fn aborted() -> crate::Failure {
    crate::Failure::Plain("Aborted!".into())
}

/// An abort prompt: "no" fails the command with `Aborted!` (exit 1).
pub fn confirm_or_abort(yes: bool, question: &str) -> Result<()> {
    if yes || ask(question)? { Ok(()) } else { Err(aborted()) }
}

/// A cancel prompt: `Ok(false)` when the answer is no (the caller prints `Cancelled`, exit 0).
pub fn confirm_or_cancel(yes: bool, question: &str) -> Result<bool> {
    if yes { Ok(true) } else { ask(question) }
}
