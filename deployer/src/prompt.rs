//! The reference's confirmation prompts (click's `[y/N]`, default no).

use std::io::{BufRead, Write};

fn ask(question: &str) -> bool {
    print!("{question} [y/N]: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// An abort prompt: "no" fails the command with `Aborted!` (exit 1).
pub fn confirm_or_abort(yes: bool, question: &str) -> crate::repo::Result<()> {
    if yes || ask(question) { Ok(()) } else { Err(crate::Failure::Plain("Aborted!".into())) }
}

/// A cancel prompt: `false` when the answer is no (the caller prints `Cancelled`, exit 0).
pub fn confirm_or_cancel(yes: bool, question: &str) -> bool {
    yes || ask(question)
}
