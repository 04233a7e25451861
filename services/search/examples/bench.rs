//! Indexing throughput and query latency of the message index, at a size
//! that matters: by default one million messages in an on-disk index, as
//! production runs it, then two thousand queries of every kind the query
//! language has.
//!
//! ```sh
//! cargo run --release -p filament-search --example bench
//! cargo run --release -p filament-search --example bench -- --messages 200000 --queries 500
//! cargo run --release -p filament-search --example bench -- --messages 200000 --steady-secs 20
//! ```
//!
//! Bounded: a fixed number of messages and queries, a deterministic
//! generator (same corpus every run), and a temporary directory removed at
//! the end. It measures the index itself (`MessageIndex`), as the indexer
//! and the query service drive it: changes applied in batches of 1024, a
//! commit every 50 000, and each query run alone on one thread.
//!
//! Then, with `--steady-secs`, the cost of a steady trickle: 20 messages a
//! second, each applied as it arrives and committed when the indexer's
//! policy says (`IndexerConfig::commit_due`). It runs twice on the same
//! index: the baseline, where every change waits only `--commit-ms`, then
//! the service's default policy, and prints the process's CPU time per
//! second of each (from `/proc/self/stat`, so Linux only) and their ratio.

use std::time::{Duration, Instant};

use filament_ids::{ChannelId, GuildId, MessageId};
use filament_search::{
    DocChange, IndexLocation, IndexedDoc, IndexerConfig, MessageIndex, SearchRequest, WriterConfig,
    query,
};
use ulid::Ulid;

const GUILDS: usize = 10;
const CHANNELS_PER_GUILD: usize = 10;
const VOCABULARY: usize = 20_000;
const APPLY_BATCH: usize = 1024;
const COMMIT_BATCH: usize = 50_000;

/// Makes one query of a kind.
type QueryMaker = fn(&mut Rng) -> String;

/// xorshift64*: a small, deterministic generator, so every run indexes the
/// same corpus and asks the same queries.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Roughly Zipf-distributed word ranks: a few words are very common,
    /// most are rare, as in chat.
    fn word_rank(&mut self) -> usize {
        let uniform = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((VOCABULARY as f64).powf(uniform) as usize).saturating_sub(1)
    }
}

/// Pronounceable made-up words: `w(0)` = "ba", `w(1)` = "be", …
fn word(rank: usize) -> String {
    const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    let mut n = rank;
    let mut out = String::new();
    loop {
        out.push(CONSONANTS[n % CONSONANTS.len()] as char);
        n /= CONSONANTS.len();
        out.push(VOWELS[n % VOWELS.len()] as char);
        n /= VOWELS.len();
        if n == 0 {
            break;
        }
    }
    out
}

struct Args {
    messages: usize,
    queries: usize,
    threads: usize,
    steady_secs: u64,
    commit_ms: u64,
    writer_mb: usize,
    ram: bool,
}

fn args() -> Args {
    let mut parsed = Args {
        messages: 1_000_000,
        queries: 2_000,
        threads: 1,
        steady_secs: 0,
        commit_ms: 100,
        writer_mb: 64,
        ram: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--ram" {
            parsed.ram = true;
            continue;
        }
        let value = args.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--messages", Some(v)) => parsed.messages = v,
            ("--queries", Some(v)) => parsed.queries = v,
            ("--threads", Some(v)) => parsed.threads = v,
            ("--steady-secs", Some(v)) => parsed.steady_secs = v as u64,
            ("--commit-ms", Some(v)) => parsed.commit_ms = v as u64,
            ("--writer-mb", Some(v)) => parsed.writer_mb = v,
            _ => {
                eprintln!(
                    "usage: bench [--messages N] [--queries N] [--threads N] \
                     [--steady-secs N] [--commit-ms N] [--writer-mb N] [--ram]"
                );
                std::process::exit(2);
            }
        }
    }
    parsed
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let dir = std::env::temp_dir().join(format!("filament-search-bench-{}", Ulid::generate()));
    let result = run(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(args: &Args, dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let writer = WriterConfig {
        memory_bytes: args.writer_mb * 1024 * 1024 * args.threads.max(1),
        threads: args.threads,
    };
    let location = if args.ram {
        IndexLocation::Ram
    } else {
        IndexLocation::Dir(dir.to_path_buf())
    };
    let index = MessageIndex::open(&location, writer)?;
    let guilds: Vec<GuildId> = (0..GUILDS).map(|_| GuildId::generate()).collect();
    let channels: Vec<Vec<ChannelId>> = guilds
        .iter()
        .map(|_| {
            (0..CHANNELS_PER_GUILD)
                .map(|_| ChannelId::generate())
                .collect()
        })
        .collect();
    println!(
        "indexing {} messages ({GUILDS} guilds, {} channels, {VOCABULARY}-word vocabulary), \
         {} writer thread(s) with {} MiB each, on disk at {}",
        args.messages,
        GUILDS * CHANNELS_PER_GUILD,
        writer.threads,
        args.writer_mb,
        dir.display()
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ids = ulid::Generator::new();
    let mut batch = Vec::with_capacity(APPLY_BATCH);
    let mut bytes = 0usize;
    let started = Instant::now();
    let mut last_report = Instant::now();
    for n in 1..=args.messages {
        let guild = rng.below(GUILDS);
        let length = 3 + rng.below(15);
        let content = (0..length)
            .map(|_| word(rng.word_rank()))
            .collect::<Vec<_>>()
            .join(" ");
        bytes += content.len();
        batch.push(DocChange::Upsert(IndexedDoc {
            message_id: ids
                .generate()
                .map(MessageId::from)
                .map_err(|err| err.to_string())?,
            guild_id: guilds[guild],
            channel_id: channels[guild][rng.below(CHANNELS_PER_GUILD)],
            content,
        }));
        if batch.len() == APPLY_BATCH {
            index.apply(&batch)?;
            batch.clear();
        }
        if n % COMMIT_BATCH == 0 {
            index.apply(&batch)?;
            batch.clear();
            index.commit(n as u64)?;
            if last_report.elapsed() > Duration::from_secs(10) {
                println!("  {n} indexed, {:.0?} so far", started.elapsed());
                last_report = Instant::now();
            }
        }
    }
    index.apply(&batch)?;
    index.commit(args.messages as u64)?;
    let indexing = started.elapsed();
    println!(
        "indexed {} messages ({:.1} MB of text) in {:.1?}: {:.0} messages/s",
        index.num_docs(),
        bytes as f64 / 1e6,
        indexing,
        args.messages as f64 / indexing.as_secs_f64()
    );

    let kinds: [(&str, QueryMaker); 6] = [
        ("common word", |rng| word(rng.below(20))),
        ("two words", |rng| {
            format!("{} {}", word(rng.below(200)), word(rng.below(200)))
        }),
        ("rare word", |rng| {
            word(1_000 + rng.below(VOCABULARY - 1_000))
        }),
        ("phrase", |rng| {
            format!("\"{} {}\"", word(rng.below(50)), word(rng.below(50)))
        }),
        ("wildcard", |rng| {
            format!("{}*", &word(100 + rng.below(900))[..3])
        }),
        ("fuzzy", |rng| format!("{}~", word(100 + rng.below(2_000)))),
    ];
    let mut all = Vec::with_capacity(args.queries);
    let mut per_kind: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut total_hits = 0usize;
    for n in 0..args.queries {
        let kind = n % kinds.len();
        let text = (kinds[kind].1)(&mut rng);
        let request = SearchRequest {
            guild_id: guilds[rng.below(GUILDS)],
            query: query::parse(&text)?,
            limit: 20,
            channel_id: None,
            exclude_channel_ids: Vec::new(),
        };
        let started = Instant::now();
        total_hits += index.search(&request)?.len();
        let took = started.elapsed();
        all.push(took);
        per_kind[kind].push(took);
    }
    println!(
        "{} queries (limit 20, one guild each, {:.1} hits on average):",
        args.queries,
        total_hits as f64 / args.queries.max(1) as f64
    );
    println!(
        "  all          p50 {:>9.2?}  p99 {:>9.2?}",
        pct(&mut all, 50),
        pct(&mut all, 99)
    );
    for ((name, _), took) in kinds.iter().zip(per_kind.iter_mut()) {
        println!(
            "  {name:<12} p50 {:>9.2?}  p99 {:>9.2?}",
            pct(took, 50),
            pct(took, 99)
        );
    }
    if args.steady_secs > 0 {
        let mut next = || -> Result<DocChange, String> {
            let guild = rng.below(GUILDS);
            let length = 3 + rng.below(15);
            Ok(DocChange::Upsert(IndexedDoc {
                message_id: ids
                    .generate()
                    .map(MessageId::from)
                    .map_err(|err| err.to_string())?,
                guild_id: guilds[guild],
                channel_id: channels[guild][rng.below(CHANNELS_PER_GUILD)],
                content: (0..length)
                    .map(|_| word(rng.word_rank()))
                    .collect::<Vec<_>>()
                    .join(" "),
            }))
        };
        let service = filament_search::Config::new(([127, 0, 0, 1], 0).into(), "").indexer;
        let policies = [
            (
                "baseline: every change waits only the interval",
                IndexerConfig {
                    commit_interval: Duration::from_millis(args.commit_ms),
                    commit_spacing: Duration::ZERO,
                },
            ),
            ("the service's default policy", service),
        ];
        let mut seq = args.messages as u64;
        let mut costs = Vec::new();
        for (name, policy) in policies {
            let settled = settle()?;
            let (cpu, commits) = steady(&index, args.steady_secs, policy, &mut seq, &mut next)?;
            let per_sec = cpu.as_secs_f64() * 1e3 / args.steady_secs as f64;
            println!(
                "steady {STEADY_RATE} msg/s for {} s, {name} (commit {:?} after a change, \
                 {:?} apart): {commits} commits, {per_sec:.1} CPU-ms/s \
                 (merges settled after {settled:?})",
                args.steady_secs, policy.commit_interval, policy.commit_spacing,
            );
            costs.push(per_sec);
        }
        if let [baseline, service] = costs[..] {
            println!(
                "steady cost of the default policy: {:.2}x the baseline's",
                service / baseline.max(f64::MIN_POSITIVE)
            );
        }
    }
    Ok(())
}

/// Messages a second in the steady phase (the issue's W3 rate).
const STEADY_RATE: u32 = 20;

/// Waits (at most 60 s) for a second in which the process used at most
/// one clock tick, so that merges left over from earlier phases are not
/// billed to the next one. Returns how long that took.
fn settle() -> Result<Duration, Box<dyn std::error::Error>> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if cpu_during(Duration::from_secs(1), || Ok(()))? <= Duration::from_millis(10) {
            break;
        }
    }
    Ok(started.elapsed())
}

/// A steady trickle of [`STEADY_RATE`] messages a second for `secs`, each
/// applied as it arrives and committed when `policy` says, as the indexer
/// does. Returns the process's CPU time over the trickle, and the commits.
fn steady(
    index: &MessageIndex,
    secs: u64,
    policy: IndexerConfig,
    seq: &mut u64,
    mut next: impl FnMut() -> Result<DocChange, String>,
) -> Result<(Duration, u64), Box<dyn std::error::Error>> {
    let gap = Duration::from_secs(1) / STEADY_RATE;
    let messages = secs * u64::from(STEADY_RATE);
    let mut commits = 0u64;
    let cpu = cpu_during(Duration::ZERO, || {
        let started = Instant::now();
        let mut dirty_since: Option<Instant> = None;
        let mut last_commit: Option<Instant> = None;
        let mut commit = |seq: u64| -> Result<Instant, Box<dyn std::error::Error>> {
            index.commit(seq)?;
            commits += 1;
            Ok(Instant::now())
        };
        for n in 0..messages {
            let arrives = started + gap * u32::try_from(n).unwrap_or(u32::MAX);
            // Commit first if that is due before the next message arrives.
            if let Some(since) = dirty_since {
                let due = policy
                    .commit_due(since.into(), last_commit.map(Into::into))
                    .into_std();
                if due <= arrives {
                    sleep_until(due);
                    last_commit = Some(commit(*seq)?);
                    dirty_since = None;
                }
            }
            sleep_until(arrives);
            index.apply(&[next()?])?;
            *seq += 1;
            dirty_since.get_or_insert_with(Instant::now);
        }
        if dirty_since.is_some() {
            commit(*seq)?;
        }
        Ok(())
    })?;
    Ok((cpu, commits))
}

// This benchmark is synchronous: there is no reactor to block.
#[allow(clippy::disallowed_methods)]
fn sleep_until(deadline: Instant) {
    if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// The process's CPU time (user and system, every thread) spent running
/// `work` and then waiting out what is left of `at_least`.
fn cpu_during(
    at_least: Duration,
    work: impl FnOnce() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let before = process_cpu()?;
    work()?;
    sleep_until(started + at_least);
    Ok(process_cpu()?.saturating_sub(before))
}

/// User plus system time of this process so far, from `/proc/self/stat`
/// (fields 14 and 15, in clock ticks of 10 ms).
fn process_cpu() -> Result<Duration, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name may hold spaces; the fields after it do not.
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(fields.get(i).ok_or("short /proc/self/stat")?.parse()?)
    };
    // Field 3 of the line is index 0 here.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn pct(samples: &mut [Duration], percentile: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = (samples.len() * percentile).div_ceil(100).max(1) - 1;
    samples[rank.min(samples.len() - 1)]
}
