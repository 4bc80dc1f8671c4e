//! The `ai-api` binary as a user runs it: `check` on the seed config and on broken ones, and a
//! served process that exits 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ai_api() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ai-api"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

fn temp_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn the_seed_config_checks_ok_with_its_master_key_set() {
    let out = ai_api()
        .args(["check", "--config", "config/config.yaml"])
        .env("AI_API_MK", "sk-x")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("7 models"), "{stdout}");
    assert!(stdout.contains("openai, anthropic, gemini"), "{stdout}");
    // The unset provider keys are listed, by variable name.
    assert!(
        stderr.contains("OPENAI_API_KEY") && stderr.contains("ANTHROPIC_API_KEY"),
        "{stderr}"
    );
}

#[test]
fn an_unset_master_key_fails_the_check_naming_the_variable() {
    let out = ai_api()
        .args(["check", "--config", "config/config.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("general_settings.master_key") && stderr.contains("AI_API_MK"),
        "{stderr}"
    );
}

#[test]
fn a_typo_fails_with_its_yaml_path_and_a_suggestion() {
    let f = temp_config(
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: k\n  - model_name: b\n    litellm_params:\n      model: opnai/gpt-4o\n      api_key: k\n",
    );
    let out = ai_api()
        .args(["check", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model_list[1].litellm_params.model: unknown provider \"opnai\"; did you mean \"openai\"?"),
        "{stderr}"
    );
}

#[test]
fn a_wrong_type_fails_with_its_yaml_path() {
    let f = temp_config(
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      timeout: soon\n",
    );
    let out = ai_api()
        .args(["check", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model_list[0].litellm_params.timeout"),
        "{stderr}"
    );
}

#[test]
fn the_demo_config_checks_ok() {
    let out = ai_api()
        .args(["check", "--config", "config/demo.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_server_exits_0_on_sigterm() {
    let ports = [free_port(), free_port()];
    let data = tempfile::tempdir().unwrap();
    let mut child = ai_api()
        .env("AI_API_DATA_DIR", data.path())
        .args(["--config", "config/demo.yaml", "--host", "127.0.0.1"])
        .args([
            "--port",
            &ports[0].to_string(),
            "--grpc-port",
            &ports[1].to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it serves.
    let url = format!("http://127.0.0.1:{}/ai-api/health/liveliness", ports[0]);
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "server never listened on {url}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("server did not exit after SIGTERM")
    });
    assert_eq!(status.code(), Some(0));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
