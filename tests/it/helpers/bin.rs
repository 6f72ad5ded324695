//! The real binary as a child process: started with JSON logs, its address read from its first log line
//! that has it, its log collected, and killed if the test ends without stopping it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_deepseek-meter");

/// `serve` on the built-in simulator, both listeners on ephemeral loopback ports.
pub const SERVE_ON_SIM: [&str; 7] = [
    "serve",
    "--upstream",
    "sim",
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
];

/// How long a child process of a test may run before the test fails with what it printed so far.
pub const RUN_BOUND: Duration = Duration::from_secs(60);

/// Runs `deepseek-meter ARGS` to its end: exit code, stdout, stderr. Async, so a sidecar on the test's own
/// runtime keeps running meanwhile (a blocking wait would starve it — and the command may wait on a lock one
/// of its tasks holds); killed, and the test failed, after [`RUN_BOUND`].
pub fn run_bin(
    args: &[&str],
) -> impl std::future::Future<Output = (Option<i32>, String, String)> + 'static {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args);
    async move {
        let out = output_of(&mut cmd).await;
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

/// Runs `cmd` to its end within [`RUN_BOUND`] (killed past it, and the test failed): its output.
pub async fn output_of(cmd: &mut tokio::process::Command) -> std::process::Output {
    cmd.kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std());
    match tokio::time::timeout(RUN_BOUND, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what} could not run: {e}")),
        Err(_) => panic!("{what} ran past {RUN_BOUND:?} (killed)"),
    }
}

/// [`output_of`] without a runtime, for a command that needs nothing of the test's own tasks meanwhile (it
/// blocks the calling thread): runs `cmd` to its end within [`RUN_BOUND`].
pub fn output_blocking(cmd: &mut Command) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_bounded(&mut child);
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits for `child` at most [`RUN_BOUND`]; past it, kills it and fails the test.
pub fn wait_bounded(child: &mut Child) -> ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.try_wait();
            panic!("a child process ran past {RUN_BOUND:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Bin {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// The values of the requested log fields (e.g. `proxy_addr`), in the order asked.
    pub addrs: Vec<String>,
}

impl Bin {
    /// Runs `deepseek-meter --log-format json ARGS` with `env` added (`DASHSCOPE_API_KEY` removed unless
    /// given) and waits for the first log line that carries every one of `fields`.
    pub fn start(args: &[&str], env: &[(&str, &str)], fields: &[&str]) -> Bin {
        let mut cmd = Command::new(BIN);
        // The default log level unless the test sets one: what an operator sees.
        cmd.args(["--log-format", "json"])
            .args(args)
            .env_remove("DASHSCOPE_API_KEY")
            .env_remove("METER_LOG");
        cmd.envs(env.iter().copied()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        // Every line goes to the log (draining the pipe so it never blocks the process) and, until the address
        // is found, to this test too, which waits for it at most RUN_BOUND.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let started = std::time::Instant::now();
        let addrs = loop {
            let left = RUN_BOUND.saturating_sub(started.elapsed());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = wait_bounded(&mut child);
                panic!(
                    "the binary never logged {fields:?} within {RUN_BOUND:?}: {:?}",
                    log.lock().unwrap()
                );
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if fields.iter().all(|f| v[*f].is_string()) {
                break fields
                    .iter()
                    .map(|f| v[*f].as_str().unwrap().to_owned())
                    .collect();
            }
        };
        Bin {
            child,
            log,
            reader: Some(reader),
            addrs,
        }
    }

    /// SIGTERM, then waits for the exit and the rest of the log.
    pub fn sigterm(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let mut kill = Command::new("kill").args(["-TERM", &pid]).spawn().unwrap();
        assert!(wait_bounded(&mut kill).success());
        self.reap()
    }

    /// SIGKILL, then waits for the exit.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.reap()
    }

    fn reap(&mut self) -> ExitStatus {
        let status = wait_bounded(&mut self.child);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }

    /// Every log line so far (all of it after `sigterm` or `kill`).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child);
    }
}
