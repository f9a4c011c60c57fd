//! The container images `scripts/images.sh` builds (which `scripts/test.sh`
//! runs first): each pushed to a real registry on loopback, pulled back,
//! and its binary run from it with buildah as the image's non-root user.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::support::registry::Registry;

/// The images, by binary.
const BINARIES: [&str; 3] = ["sluice-operator", "sluice-gateway", "sluice-runtime"];
/// The largest an image may be.
const MAX_IMAGE_BYTES: u64 = 40 * 1024 * 1024;

/// buildah on the storage `scripts/images.sh` builds into.
fn buildah(args: &[&str]) -> Output {
    let containers = std::env::var_os("SLUICE_CONTAINERS").map_or_else(
        || sluice_testing::repo_root().join(".sluice/containers"),
        PathBuf::from,
    );
    Command::new("buildah")
        .arg("--root")
        .arg(containers.join("storage"))
        .arg("--runroot")
        .arg(containers.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("cannot run buildah: run scripts/images.sh, which installs it")
}

fn buildah_ok(args: &[&str]) -> String {
    let output = buildah(args);
    assert!(
        output.status.success(),
        "buildah {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn each_image_is_pushed_pulled_back_and_runs_as_a_non_root_user() {
    let version = env!("CARGO_PKG_VERSION");
    let registry = Registry::start();
    for binary in BINARIES {
        let built = format!("ghcr.io/sluice-dev/{binary}:{version}");
        let listed = buildah(&["images", "--format", "{{.Name}}:{{.Tag}}"]);
        assert!(
            String::from_utf8_lossy(&listed.stdout)
                .lines()
                .any(|l| l == built),
            "{built} is not built: run scripts/images.sh"
        );
        let remote = format!("{}/{binary}:{version}", registry.host);
        buildah_ok(&[
            "push",
            "--quiet",
            "--tls-verify=false",
            &built,
            &format!("docker://{remote}"),
        ]);
        // Pulled back under the registry's name: what a node would run.
        let pulled = buildah_ok(&[
            "pull",
            "--quiet",
            "--tls-verify=false",
            &format!("docker://{remote}"),
        ]);
        let user = buildah_ok(&[
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.OCIv1.Config.User}}",
            &pulled,
        ]);
        assert_eq!(user, "65532:65532", "{binary} runs as the non-root user");
        let container = buildah_ok(&["from", "--quiet", &pulled]);
        let ran = buildah(&[
            "run",
            "--isolation",
            "chroot",
            &container,
            "--",
            &format!("/{binary}"),
            "--version",
        ]);
        let _ = buildah(&["rm", &container]);
        assert!(
            ran.status.success(),
            "{binary} --version in its image:\n{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout).trim(),
            format!("{binary} {version}")
        );
        let size = image_size(&pulled);
        println!("{binary}: {:.1} MiB", size as f64 / (1024.0 * 1024.0));
        assert!(size < MAX_IMAGE_BYTES, "{binary}'s image is {size} bytes");
    }
}

/// An image's size in bytes, as buildah stores it (uncompressed), from
/// the decimal size it prints (e.g. `21.2 MB`), so within 0.5 %.
fn image_size(image: &str) -> u64 {
    let listed = buildah_ok(&["images", "--format", "{{.Size}}", image]);
    // One line per name the image has here: the same size on each.
    let printed = listed.lines().next().unwrap_or_default();
    let (number, unit) = printed
        .split_once(' ')
        .unwrap_or_else(|| panic!("an unexpected size: {printed:?}"));
    let number: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("an unexpected size: {printed:?}"));
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => panic!("an unexpected size unit: {printed:?}"),
    };
    (number * scale) as u64
}
