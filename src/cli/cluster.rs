//! `tokenflow cluster up`: a supervisor above a timely cluster of `tokenflow run`
//! processes. Timely is fail-stop (one dead process brings the others down), so
//! the supervisor watches the processes; when one dies it stops the rest, splits
//! the model over the processes left, starts a new timely cluster on fresh ports,
//! and resumes every unfinished request from the durable token log. The client
//! gets each whole answer once, from the log, at the end.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokenflow_engine::dataflow::durable_log::LoggedRun;
use tokenflow_operators::LlamaModel;
use tokenflow_operators::llama::even_splits;
use tokenflow_serve::membership::agent::die_with_parent;

use super::generate::{DEFAULT_MODEL, resolve_model};

/// Subcommands of `tokenflow cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a supervised cluster of processes and run prompts to completion.
    Up(UpArgs),
}

/// Arguments of `tokenflow cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    /// What to do.
    pub command: ClusterCommand,
}

/// Arguments of `tokenflow cluster up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Processes to start on this machine (ports are chosen free each start).
    #[arg(long, default_value_t = 3)]
    pub processes: usize,
    /// GGUF model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Folder for the token log, the answers and each process's output.
    #[arg(long, default_value = "out/cluster")]
    pub log_dir: PathBuf,
    /// Restarts allowed before giving up.
    #[arg(long, default_value_t = 5)]
    pub max_restarts: usize,
    /// Kill process I with SIGKILL during the first start: `I@800ms` (a time after
    /// the start) or `I@40tok` (once the token log holds 40 tokens): failure
    /// injection for tests and demos.
    #[arg(long)]
    pub kill: Option<String>,
    /// Continue the run whose token log is in `--log-dir` (after the supervisor
    /// itself was killed): unfinished requests resume from their logged tokens.
    #[arg(long)]
    pub resume: bool,
    /// Arguments for every `tokenflow run` (prompts, --max-tokens, --cluster, ...), after `--`.
    #[arg(last = true)]
    pub run_args: Vec<String>,
}

/// Runs `tokenflow cluster`.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Up(up) => up_cluster(up),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// When `--kill` strikes.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    After(Duration),
    Tokens(usize),
}

fn parse_kill(spec: &str) -> anyhow::Result<(usize, KillAt)> {
    let (i, t) = spec
        .split_once('@')
        .with_context(|| format!("--kill `{spec}`: expected I@TIME or I@Ntok"))?;
    let process: usize = i.parse().with_context(|| format!("--kill process `{i}`"))?;
    if let Some(n) = t.strip_suffix("tok") {
        let n = n
            .parse()
            .with_context(|| format!("--kill token count `{n}`"))?;
        return Ok((process, KillAt::Tokens(n)));
    }
    let when = tokenflow_planner::units::parse_duration("--kill", t)?;
    Ok((process, KillAt::After(when)))
}

/// Token records in the log so far.
fn logged_tokens(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| {
        t.lines().filter(|l| l.starts_with("{\"Token\"")).count()
    })
}

fn up_cluster(args: UpArgs) -> anyhow::Result<()> {
    if args.processes == 0 {
        bail!("--processes must be positive");
    }
    for reserved in [
        "--hostfile",
        "--process",
        "--stages",
        "--token-log",
        "--resume",
        "--workers",
    ] {
        if args.run_args.iter().any(|a| a == reserved) {
            bail!("{reserved} is set by the supervisor; leave it out of the run arguments");
        }
    }
    let kill = args.kill.as_deref().map(parse_kill).transpose()?;
    let model_path = resolve_model(&args.model)?;
    let n_layers = LlamaModel::open(&model_path)
        .with_context(|| format!("opening {}", model_path.display()))?
        .config
        .n_layers;
    std::fs::create_dir_all(&args.log_dir)
        .with_context(|| format!("creating {}", args.log_dir.display()))?;
    let log = args.log_dir.join("tokens.log");
    if log.exists() && !args.resume {
        bail!(
            "{} exists: pass --resume to continue its run, remove it, or pick another --log-dir",
            log.display()
        );
    }
    if args.resume && !log.exists() {
        bail!(
            "--resume: {} holds no token log to continue",
            args.log_dir.display()
        );
    }
    let answers = args.log_dir.join("answers.json");
    let exe = std::env::current_exe()?;
    // Original process numbers still alive; the model is split over them.
    let mut alive: Vec<usize> = (0..args.processes).collect();
    let start = Instant::now();
    for attempt in 0..=args.max_restarts {
        if alive.is_empty() {
            bail!("every process has died");
        }
        if alive.len() > n_layers {
            alive.truncate(n_layers);
        }
        let splits = even_splits(n_layers, alive.len());
        let stages = splits
            .iter()
            .map(|r| format!("{}..{}", r.start, r.end))
            .collect::<Vec<_>>()
            .join(",");
        let hosts: Vec<String> = alive
            .iter()
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<_, _>>()?;
        let hostfile = args.log_dir.join(format!("hosts-{attempt}.txt"));
        std::fs::write(&hostfile, hosts.join("\n") + "\n")?;
        eprintln!(
            "start {attempt}: {} processes (originally {:?}), stages {stages}",
            alive.len(),
            alive
        );
        let mut children: Vec<(usize, Child)> = Vec::new();
        for (rank, &original) in alive.iter().enumerate() {
            let out = std::fs::File::create(
                args.log_dir
                    .join(format!("process-{original}-start-{attempt}.log")),
            )?;
            let mut cmd = Command::new(&exe);
            cmd.arg("run")
                .args(["--model", &model_path.to_string_lossy()])
                .args(["--hostfile", &hostfile.to_string_lossy()])
                .args(["--process", &rank.to_string(), "--workers", "1"])
                .args(["--stages", &stages])
                .args(["--token-log", &log.to_string_lossy()])
                .args(&args.run_args)
                .stdout(out.try_clone()?)
                .stderr(out);
            if attempt > 0 || args.resume {
                cmd.arg("--resume");
            }
            // Orphans would go on writing the token log a new supervisor
            // resumes; the main thread forks, which lives as long as we do.
            die_with_parent(&mut cmd);
            if rank == 0 {
                cmd.args(["--tokens-json", &answers.to_string_lossy()]);
            }
            children.push((original, cmd.spawn().context("starting a process")?));
        }
        let mut failed: Option<(usize, String)> = None;
        let mut done = vec![false; children.len()];
        while failed.is_none() && done.iter().any(|d| !d) {
            let due = match kill {
                Some((_, KillAt::After(at))) => start.elapsed() >= at,
                Some((_, KillAt::Tokens(n))) => logged_tokens(&log) >= n,
                None => false,
            };
            if attempt == 0
                && due
                && let Some((victim, _)) = kill
                && let Some((_, child)) = children.iter_mut().find(|(o, _)| *o == victim)
                && child.try_wait()?.is_none()
            {
                eprintln!("killing process {victim} (SIGKILL)");
                child.kill()?;
            }
            for (k, (original, child)) in children.iter_mut().enumerate() {
                if done[k] {
                    continue;
                }
                if let Some(status) = child.try_wait()? {
                    done[k] = true;
                    if !status.success() {
                        failed = Some((*original, status.to_string()));
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match failed {
            None => {
                let logged = LoggedRun::read(&log)?;
                println!(
                    "all {} requests answered after {attempt} restart(s), in {:.2} s",
                    logged.requests.len(),
                    start.elapsed().as_secs_f64()
                );
                let model = LlamaModel::open(&model_path)?;
                for r in &logged.requests {
                    let ids: Vec<u32> = logged
                        .tokens
                        .get(&r.id)
                        .map(|t| {
                            t.iter()
                                .copied()
                                .filter(|&t| !model.tokenizer.is_special(t))
                                .collect()
                        })
                        .unwrap_or_default();
                    match logged.ended.get(&r.id) {
                        Some((_, Some(error))) => println!("[{}] refused: {error}", r.id),
                        _ => println!("[{}] {}", r.id, model.tokenizer.decode(&ids)?.trim_end()),
                    }
                }
                return Ok(());
            }
            Some((dead, status)) => {
                // The others fail or hang without their peer: stop them all.
                for (_, child) in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let logged = LoggedRun::read(&log)?;
                eprintln!(
                    "process {dead} died ({status}); {} of {} requests unfinished; restarting without it",
                    logged.unfinished().len(),
                    logged.requests.len()
                );
                alive.retain(|&p| p != dead);
            }
        }
    }
    bail!("gave up after {} restarts", args.max_restarts)
}
