//! Seeded random inputs for the TSV, JSON-lines and submission readers: whatever the bytes,
//! they return a value or an error, never panic.

use std::path::Path;

use kdlora_glue::{GlueTask, Split, parse_jsonl, parse_predictions, parse_tsv};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PIECES: &[&[u8]] = &[
    b"\t",
    b"\n",
    b"\r\n",
    b"\r",
    b"\xEF\xBB\xBF",
    b"\xff",
    b"\xc3",
    b"0",
    b"1",
    b"-1",
    b"5.000",
    b"nan",
    b"inf",
    b"entailment",
    b"not_entailment",
    b"neutral",
    b"contradiction",
    b"index",
    b"sentence",
    b"sentence1",
    b"sentence2",
    b"label",
    b"gold_label",
    b"score",
    b"Quality",
    b"#1 String",
    b"#2 String",
    b"question",
    b"question1",
    b"question2",
    b"is_duplicate",
    b"{",
    b"}",
    b"\"",
    b":",
    b",",
    b"[",
    b"]",
    b"\"label\"",
    b"\"premise\"",
    b"\"sentence\"",
    b"prediction",
    b" ",
    b"",
    b"\x00",
    b"\xe2\x80\xa8",
];

fn random_input(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(0..40) {
        if rng.random_bool(0.7) {
            out.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
        } else {
            out.push(rng.random());
        }
    }
    out
}

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..=out.len());
        match rng.random_range(0..3) {
            0 if at < out.len() => {
                out.remove(at);
            }
            1 => out.insert(
                at,
                *[b'\t', b'\n', b'\r', 0xff]
                    .get(rng.random_range(0..4))
                    .unwrap(),
            ),
            _ => {
                let piece = PIECES[rng.random_range(0..PIECES.len())];
                out.splice(at..at, piece.iter().copied());
            }
        }
    }
    out
}

const VALID: &[(&[u8], GlueTask, Split)] = &[
    (
        b"gj04\t1\t\tGood.\ngj04\t0\t*\tBad.",
        GlueTask::Cola,
        Split::Train,
    ),
    (
        b"sentence\tlabel\nfine \t1\nbad \t0\n",
        GlueTask::Sst2,
        Split::Dev,
    ),
    (
        b"index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n",
        GlueTask::Rte,
        Split::Dev,
    ),
    (
        b"\xEF\xBB\xBFQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA\tB\n",
        GlueTask::Mrpc,
        Split::Train,
    ),
    (
        b"{\"premise\":\"a\",\"hypothesis\":\"b\",\"label\":2,\"idx\":0}\n",
        GlueTask::Mnli,
        Split::Train,
    ),
];

#[test]
fn readers_never_panic_on_random_bytes() {
    let mut rng = StdRng::seed_from_u64(0x6c75_6521);
    let path = Path::new("fuzz.tsv");
    let mut ok = 0usize;
    for i in 0..6000 {
        let input = if i % 2 == 0 {
            random_input(&mut rng)
        } else {
            let (base, _, _) = VALID[rng.random_range(0..VALID.len())];
            mutate(&mut rng, base)
        };
        for task in GlueTask::ALL {
            for &split in task.splits() {
                if let Ok(rows) = parse_tsv(&input, path, task, split) {
                    ok += 1;
                    // Accepted input: one example per line, indices in row order.
                    assert!(rows.iter().enumerate().all(|(i, e)| e.index == i));
                }
                let _ = parse_jsonl(&input, path, task, split);
            }
            let _ = parse_predictions(&input, path, task);
        }
    }
    // The mutated valid files must sometimes still parse, or the test explores nothing.
    assert!(ok > 0);
}

#[test]
fn valid_seeds_parse() {
    for (bytes, task, split) in VALID {
        let rows = if bytes.starts_with(b"{") {
            parse_jsonl(bytes, Path::new("v"), *task, *split).unwrap()
        } else {
            parse_tsv(bytes, Path::new("v"), *task, *split).unwrap()
        };
        assert!(!rows.is_empty());
    }
}
