//! `download_task` against a local HTTP server on 127.0.0.1 serving archives built here. No
//! real network access.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use kdlora_glue::download::{DownloadEvent, DownloadOptions, DownloadOutcome, GlueSources};
use kdlora_glue::{GlueDataset, GlueError, GlueTask, Label, Split, download_task};
use zip::write::SimpleFileOptions;

/// A route: body and the Content-Length to announce (may lie, to test size checks).
struct Route {
    body: Vec<u8>,
    content_length: usize,
}

/// Starts a one-request-at-a-time HTTP/1.1 server; returns its base URL.
fn serve(routes: HashMap<String, Route>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Drain the headers.
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" || line == "\n" => break,
                    Ok(_) => {}
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let _ = match routes.get(&path) {
                Some(r) => stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            r.content_length
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| stream.write_all(&r.body)),
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    format!("http://{addr}")
}

fn route(body: Vec<u8>) -> Route {
    Route {
        content_length: body.len(),
        body,
    }
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        if name.ends_with('/') {
            w.add_directory(*name, opts).unwrap();
        } else {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

const COLA_TRAIN: &[u8] = b"gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tThe more we study.\ngj04\t1\t\tLast line.";
const COLA_DEV: &[u8] = b"gj04\t1\t\tA.\n";
const COLA_TEST: &[u8] = b"index\tsentence\n0\tB.\n1\tC.\n";

fn options(base: &str) -> DownloadOptions {
    DownloadOptions {
        sources: GlueSources::from_base_url(base),
        ..DownloadOptions::default()
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn downloads_and_extracts_a_task_archive() {
    let mut routes = HashMap::new();
    routes.insert(
        "/CoLA.zip".to_string(),
        route(zip_of(&[
            ("CoLA/", b""),
            ("CoLA/train.tsv", COLA_TRAIN),
            ("CoLA/dev.tsv", COLA_DEV),
            ("CoLA/test.tsv", COLA_TEST),
            ("CoLA/original/raw/in_domain_train.tsv", b"x"),
        ])),
    );
    let base = serve(routes);
    let out = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let outcome = download_task(GlueTask::Cola, out.path(), &options(&base), &mut |e| {
        events.push(e)
    })
    .unwrap();
    assert_eq!(
        outcome,
        DownloadOutcome::Downloaded(out.path().join("CoLA"))
    );
    let train = GlueDataset::load(out.path(), GlueTask::Cola, Split::Train).unwrap();
    assert_eq!(train.len(), 3);
    assert_eq!(train.examples()[2].text_a, "Last line.");
    assert_eq!(
        GlueDataset::load(out.path(), GlueTask::Cola, Split::Test)
            .unwrap()
            .len(),
        2
    );
    assert!(
        out.path()
            .join("CoLA/original/raw/in_domain_train.tsv")
            .is_file()
    );
    assert!(
        leftovers(out.path()).is_empty(),
        "{:?}",
        leftovers(out.path())
    );

    match &events[0] {
        DownloadEvent::Started { url, total } => {
            assert_eq!(url, &format!("{base}/CoLA.zip"));
            assert!(total.is_some());
        }
        other => panic!("first event {other:?}"),
    }
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DownloadEvent::Finished { .. }))
    );

    // A second call leaves the folder alone; `force` replaces it.
    std::fs::write(out.path().join("CoLA/marker"), b"old").unwrap();
    let again = download_task(GlueTask::Cola, out.path(), &options(&base), &mut |_| {}).unwrap();
    assert!(matches!(again, DownloadOutcome::AlreadyPresent(_)));
    assert!(out.path().join("CoLA/marker").exists());
    let forced = DownloadOptions {
        force: true,
        ..options(&base)
    };
    download_task(GlueTask::Cola, out.path(), &forced, &mut |_| {}).unwrap();
    assert!(!out.path().join("CoLA/marker").exists());
    assert_eq!(
        GlueDataset::load(out.path(), GlueTask::Cola, Split::Train)
            .unwrap()
            .len(),
        3
    );
    assert!(leftovers(out.path()).is_empty());
}

#[test]
fn builds_mrpc_and_ax_like_the_glue_script() {
    let mut routes = HashMap::new();
    routes.insert(
        "/msr_paraphrase_train.txt".to_string(),
        route(
            "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t10\t11\tA .\tB .\r\n0\t12\t13\tC .\tD .\r\n1\t14\t15\tE .\tF .\r\n"
                .as_bytes()
                .to_vec(),
        ),
    );
    routes.insert(
        "/msr_paraphrase_test.txt".to_string(),
        route(b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t20\t21\tG .\tH .\r\n0\t22\t23\tI .\tJ .\r\n".to_vec()),
    );
    routes.insert(
        "/mrpc_dev_ids.tsv".to_string(),
        route(b"12\t13\r\n".to_vec()),
    );
    routes.insert(
        "/AX.tsv".to_string(),
        route(b"index\tsentence1\tsentence2\n0\tThe cat sat.\tThe cat did not sit.\n".to_vec()),
    );
    let base = serve(routes);
    let out = tempfile::tempdir().unwrap();
    download_task(GlueTask::Mrpc, out.path(), &options(&base), &mut |_| {}).unwrap();
    let train = GlueDataset::load(out.path(), GlueTask::Mrpc, Split::Train).unwrap();
    let dev = GlueDataset::load(out.path(), GlueTask::Mrpc, Split::Dev).unwrap();
    let test = GlueDataset::load(out.path(), GlueTask::Mrpc, Split::Test).unwrap();
    assert_eq!((train.len(), dev.len(), test.len()), (2, 1, 2));
    assert_eq!(dev.examples()[0].text_a, "C .");
    assert_eq!(dev.examples()[0].label, Some(Label::Class(0)));
    assert_eq!(train.examples()[1].text_b.as_deref(), Some("F ."));
    assert!(test.examples().iter().all(|e| e.label.is_none()));
    let header = std::fs::read(out.path().join("MRPC/train.tsv")).unwrap();
    assert!(
        header.starts_with(b"\xEF\xBB\xBFQuality\t"),
        "BOM kept as the GLUE files have it"
    );
    let test_text = std::fs::read_to_string(out.path().join("MRPC/test.tsv")).unwrap();
    assert!(
        test_text.starts_with("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t20\t21\tG .\tH .\n")
    );

    download_task(GlueTask::Ax, out.path(), &options(&base), &mut |_| {}).unwrap();
    let ax = GlueDataset::load(out.path(), GlueTask::Ax, Split::Test).unwrap();
    assert_eq!(ax.len(), 1);
    assert!(leftovers(out.path()).is_empty());
}

#[test]
fn failures_leave_nothing_behind() {
    let mut routes = HashMap::new();
    // Announces more bytes than it sends.
    let body = zip_of(&[("RTE/train.tsv", b"index\tsentence1\tsentence2\tlabel\n")]);
    routes.insert(
        "/RTE.zip".to_string(),
        Route {
            content_length: body.len() + 100,
            body,
        },
    );
    // Escapes the output folder.
    routes.insert(
        "/WNLI.zip".to_string(),
        route(zip_of(&[("WNLI/train.tsv", b"x"), ("../evil.txt", b"x")])),
    );
    // Wrong top-level folder.
    routes.insert(
        "/SST-2.zip".to_string(),
        route(zip_of(&[("SST2/train.tsv", b"x")])),
    );
    // Not a zip at all.
    routes.insert(
        "/STS-B.zip".to_string(),
        route(b"<html>moved</html>".to_vec()),
    );
    let base = serve(routes);
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("glue");

    let e = download_task(GlueTask::Rte, &out, &options(&base), &mut |_| {}).unwrap_err();
    assert!(matches!(e, GlueError::Download { .. }), "{e}");
    assert!(!out.join("RTE").exists());

    let e = download_task(GlueTask::Wnli, &out, &options(&base), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("unsafe path"), "{e}");
    assert!(!out.join("WNLI").exists());
    assert!(!root.path().join("evil.txt").exists());

    let e = download_task(GlueTask::Sst2, &out, &options(&base), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("no top-level folder SST-2/"), "{e}");

    let e = download_task(GlueTask::Stsb, &out, &options(&base), &mut |_| {}).unwrap_err();
    assert!(matches!(e, GlueError::Archive { .. }), "{e}");

    let e = download_task(GlueTask::Qqp, &out, &options(&base), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("HTTP status 404"), "{e}");
    assert!(e.to_string().contains("/QQP-clean.zip"), "{e}");

    let small = DownloadOptions {
        max_bytes: 10,
        ..options(&base)
    };
    let e = download_task(GlueTask::Wnli, &out, &small, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("exceeds the limit"), "{e}");

    let entries: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(entries.is_empty(), "left behind: {entries:?}");
}
