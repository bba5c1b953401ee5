//! `writ dlq`: the dead-letter commands of the binary (list, show, retry,
//! drop), over the library's [`writ::tools::Tools`].

use std::process::ExitCode;

use clap::Subcommand;
use writ::config::Config;

use crate::signal_watch;

#[derive(Subcommand)]
pub enum DlqAction {
    /// List dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its original fields.
    Show {
        /// Dead-letter id (`writ dlq list` shows them).
        #[arg(value_parser = letter_id)]
        id: String,
    },
    /// Re-apply at the original version; removed from the stream if applied or superseded (kept: a fields-layout or insert_once put a later write superseded, unless the key reads as deleted or removed; while older writes of its partition are not applied yet; or, in fields-layout, insert_once and undeclared collections, while an older letter of its key remains); --all goes in write order.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        /// Dead-letter id, or --all.
        #[arg(value_parser = letter_id)]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Drop {
        /// Dead-letter id, or --all.
        #[arg(value_parser = letter_id)]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

/// Dead letters read per page by `dlq retry --all` and `dlq drop --all`, at
/// most (and about 4 MiB of them).
const DLQ_PAGE: usize = 100;

pub async fn dlq(config: Config, action: DlqAction) -> anyhow::Result<ExitCode> {
    let tools = writ::tools::Tools::connect(config).await?;
    let done = async {
        tokio::spawn(signal_watch(tools.abort.clone()));
        match action {
            DlqAction::List { count, json } => {
                print_letters(&tools.dlq_list(count).await?, json)?;
                Ok(ExitCode::SUCCESS)
            }
            DlqAction::Show { id } => match tools.dlq_show(&id).await? {
                Some(l) => {
                    println!("{}", serde_json::to_string_pretty(&l)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => anyhow::bail!("no dead letter {id}; {NOT_THERE}"),
            },
            // clap took one id or --all (the `which` group).
            DlqAction::Retry { id, .. } => dlq_retry(&tools, id).await.map_err(|e| {
                if matches!(e.downcast_ref::<writ::Error>(), Some(writ::Error::Shutdown)) {
                    // Most of a retry's time in an outage is inside an apply.
                    e.context("stopped by a signal while retrying a letter: its write may have applied and its letter still be listed; run the retry again (a letter whose write is applied is then removed)")
                } else {
                    e
                }
            }),
            DlqAction::Drop { id, .. } => dlq_drop(&tools, id).await,
        }
    }
    .await;
    tools.close().await;
    done
}

/// What to say when a named dead letter is not there: the id given may be
/// the write's own (the `entry=` of the daemon's log line).
const NOT_THERE: &str = "`writ dlq list` shows the dead letters, each with its write's id in the source id column (the `entry=` of the daemon's log; the letter's own id is its `dead_letter=`)";

/// A dead-letter id as given (clap's parser: a bad one exits 2 as any
/// argument that does not parse), checked to be a whole stream id
/// (`ms-seq`) before Redis sees it: a bare `ms` means every letter of that
/// millisecond to `XRANGE` (`show`, `retry`) but only `ms-0` to `XDEL`
/// (`drop`).
fn letter_id(id: &str) -> Result<String, String> {
    if !id.contains('-') || id.parse::<writ::protocol::Version>().is_err() {
        return Err(format!(
            "{id:?} is not a dead-letter id: ids look like 1796559839946-0 (`writ dlq list` shows them)"
        ));
    }
    Ok(id.to_string())
}

/// `writ dlq list`: a table, or JSON.
fn print_letters(letters: &[writ::tools::dlq::Letter], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(letters)?);
        return Ok(());
    }
    println!(
        "{:<22} {:<18} {:<16} {:>8}  detail",
        "id", "reason", "source id", "attempts"
    );
    for l in letters {
        let detail: String = l.detail.chars().take(90).collect();
        println!(
            "{:<22} {:<18} {:<16} {:>8}  {}",
            l.id, l.reason, l.source_id, l.attempts, detail
        );
    }
    println!("{} dead letters shown", letters.len());
    Ok(())
}

/// `writ dlq retry <id>` (`one`) or `--all`: each letter up to the newest at
/// the start, in the order of the writes they park (a letter waits for an
/// older letter of its key). Fails when a letter still fails, or a named
/// one is not there (an empty queue is no failure).
async fn dlq_retry(tools: &writ::tools::Tools, one: Option<String>) -> anyhow::Result<ExitCode> {
    let through = tools.dlq_newest().await?.unwrap_or_else(|| "0-0".into());
    let report = |id: &str, r: &Result<writ::ack::Outcome, String>| match r {
        Ok(outcome) => println!(
            "{id}: {} (removed from the dead-letter stream)",
            outcome.as_str()
        ),
        Err(reason) => println!("{id}: still failing: {reason}"),
    };
    if let Some(id) = one {
        let Some(letter) = tools.dlq_show(&id).await? else {
            eprintln!("writ: no dead letter {id}; {NOT_THERE}");
            return Ok(ExitCode::FAILURE);
        };
        let r = match tools.dlq_older_letter(&letter, through, DLQ_PAGE).await? {
            Some(kept) => Err(kept),
            None => tools.dlq_retry(&letter).await?,
        };
        report(&id, &r);
        return Ok(if r.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let heads = tools.dlq_heads(through, DLQ_PAGE).await?;
    if heads.is_empty() {
        println!("no dead letters to retry");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = writ::tools::failed::Failed::default();
    for head in &heads {
        if tools.abort.is_cancelled() {
            eprintln!("writ: stopped by a signal; the letters not retried yet stay");
            return Ok(ExitCode::FAILURE);
        }
        if let Some(r) = tools.dlq_retry_in_run(head, &failed).await? {
            report(&head.id, &r);
            if r.is_err() {
                failed.add(head);
            }
        }
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `writ dlq drop <id>` (`one`) or `--all` (up to the newest letter at the
/// start: one parked meanwhile stays for the operator to see).
async fn dlq_drop(tools: &writ::tools::Tools, one: Option<String>) -> anyhow::Result<ExitCode> {
    let mut n = 0;
    match &one {
        Some(id) => n += usize::from(tools.dlq_drop(id).await?),
        None => {
            let through = tools.dlq_newest().await?.unwrap_or_else(|| "0-0".into());
            let mut pages = tools.dlq_pages(through, DLQ_PAGE);
            loop {
                let page = tools.dlq_next(&mut pages).await?;
                if page.is_empty() {
                    break;
                }
                for l in &page {
                    if tools.abort.is_cancelled() {
                        eprintln!("writ: stopped by a signal after dropping {n} dead letters; the others stay");
                        return Ok(ExitCode::FAILURE);
                    }
                    n += usize::from(tools.dlq_drop(&l.id).await?);
                }
            }
        }
    }
    // A named id that is not there is a failure, as for retry.
    if let Some(id) = one.as_ref().filter(|_| n == 0) {
        eprintln!("writ: no dead letter {id}; {NOT_THERE}");
        return Ok(ExitCode::FAILURE);
    }
    println!("dropped {n} dead letters");
    Ok(ExitCode::SUCCESS)
}
