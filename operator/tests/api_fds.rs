//! The control API survives running out of file descriptors (issue 13): `accept()` failing with
//! EMFILE is logged and retried, never the end of the server. Its own test binary, because it
//! lowers this process's descriptor limit (with util-linux `prlimit`).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::api::Api;
use layergate_operator::output::Settings;
use layergate_operator::source::DirSource;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn nofile(limit: &str) {
    let ok = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={limit}"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit --nofile={limit}");
}

fn limits() -> (String, String) {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_owned(), f[4].to_owned())
}

#[test]
fn an_accept_error_for_lack_of_file_descriptors_is_survived() {
    let root = std::env::temp_dir().join(format!("layergate-api-fds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, out) = (root.join("manifests"), root.join("out"));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo/manifests");
    for f in std::fs::read_dir(&demo).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let settings = Settings {
        listen: "127.0.0.1:8080".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        filter: Default::default(),
        wasm_path: "filter.wasm".into(),
        control: Some(("127.0.0.1".into(), 9902)),
        key_service: None,
        allow_endpoints: Default::default(),
        key_max_staleness_seconds: layergate_operator::output::DEFAULT_MAX_STALENESS_SECONDS,
        gateway_replicas: 1,
        limits: Default::default(),
        access_log_path: None,
    };
    let source = Arc::new(DirSource::new(dir, out, settings));
    source.refresh().unwrap();
    let api = Arc::new(Api::new(source, 120));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        api.serve_blocking(
            listener,
            layergate_operator::api::Role::Control,
            std::future::pending(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let (soft, hard) = limits();
    // Connections from another process, while this one may open no more descriptors.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let mut clients = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import socket,time\ns=[socket.create_connection(('127.0.0.1',{}))for _ in range(20)]\ntime.sleep(2)",
            addr.port()
        ))
        .spawn()
        .unwrap();
    nofile(&format!("{}:{hard}", open));
    std::thread::sleep(Duration::from_millis(1200));
    nofile(&format!("{soft}:{hard}"));
    let _ = clients.wait();
    assert!(
        !server.is_finished(),
        "the server stopped: {:?}",
        server.join()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = std::fs::remove_dir_all(&root);
}
