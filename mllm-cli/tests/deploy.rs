//! The deployment files (Dockerfile, deploy/*.yaml) checked offline by
//! scripts/check_deploy.py: the Kubernetes manifests against the API's schemas with the
//! PyPI validator `kubernetes-validate` (installed once into a cached venv), their links
//! to each other, and every `mllm` flag they use against this binary's help. Needs neither
//! Docker nor a cluster.

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn the_dockerfile_and_kubernetes_manifests_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let out = Command::new("python3")
        .arg(root.join("scripts/check_deploy.py"))
        .args(["--mllm", env!("CARGO_BIN_EXE_mllm")])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("running python3");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "check_deploy.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
