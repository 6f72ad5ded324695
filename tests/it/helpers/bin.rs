//! The real binary as a child process: started with JSON logs, its address read from its first log line
//! that has it, its log collected, and killed if the test ends without stopping it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

/// How long a command may run before the test fails with what it printed so far.
pub const RUN_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `deepseek-meter ARGS` to its end (killed, and the test failed, after [`RUN_BOUND`]): exit code,
/// stdout, stderr.
pub fn run_bin(args: &[&str]) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "deepseek-meter {args:?} ran past {RUN_BOUND:?}; stdout: {}; stderr: {}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
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
        cmd.args(["--log-format", "json"])
            .args(args)
            .env_remove("DASHSCOPE_API_KEY");
        cmd.envs(env.iter().copied()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let addrs = loop {
            let line = lines.next().expect("the binary logs its address").unwrap();
            log.lock().unwrap().push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if fields.iter().all(|f| v[*f].is_string()) {
                break fields
                    .iter()
                    .map(|f| v[*f].as_str().unwrap().to_owned())
                    .collect();
            }
        };
        // Keep draining the log so the pipe never blocks the process.
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
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
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.wait()
    }

    /// SIGKILL, then waits for the exit.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.wait()
    }

    fn wait(&mut self) -> ExitStatus {
        let status = self.child.wait().unwrap();
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
        let _ = self.child.wait();
    }
}
