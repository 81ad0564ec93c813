//! The mutation engine: a seeded corpus of valid files per target, byte-level and format-aware
//! mutations, each execution on a worker thread under `catch_unwind` with a deadline and a
//! memory cap, and crash inputs saved for reproduction.
//!
//! Stable Rust has no coverage-guided fuzzing without cargo-fuzz (nightly), so the engine steers
//! by what the loader answers instead: an input whose outcome (the error's kind and message with
//! the echoed values removed, or the accepted shape) was not seen before joins the corpus. That
//! keeps inputs that got further into a loader (past the header, into a later field) as parents.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

// ------------------------------------------------------------------------------------------------
// Memory cap

/// The test binary's allocator: the system allocator, with per-thread accounting on fuzz worker
/// threads only. A loader that sizes an allocation from a number in the file (a length, a label
/// count) must not take the machine down (no swap here, and other builds run beside the fuzzer):
/// past the hard cap an allocation fails, which aborts the process with "memory allocation of N
/// bytes failed" (stable Rust cannot turn that into a panic); past the soft cap the execution is
/// counted as a crash once it returns.
pub struct CappedAlloc;

#[global_allocator]
static ALLOCATOR: CappedAlloc = CappedAlloc;

thread_local! {
    // Const-initialised and without destructors, so the allocator can use them at any time.
    static HARD_CAP: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn charge(size: usize) -> bool {
    let cap = HARD_CAP.try_with(Cell::get).unwrap_or(0);
    if cap == 0 {
        return true;
    }
    let now = LIVE.try_with(Cell::get).unwrap_or(0) + size as isize;
    if now > cap as isize {
        // Printed before std aborts, so that the abort names its cause.
        let _ = std::io::stderr().write_all(
            b"\nkdlora fuzz: an execution allocated past the hard memory cap \
              (KDLORA_FUZZ_MEMORY_MB x 4); the process aborts. Rerun with \
              KDLORA_FUZZ_SAVE_EACH=1 to keep the input.\n",
        );
        return false;
    }
    let _ = LIVE.try_with(|l| l.set(now));
    let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    true
}

fn refund(size: usize) {
    if HARD_CAP.try_with(Cell::get).unwrap_or(0) != 0 {
        let _ = LIVE.try_with(|l| l.set(l.get() - size as isize));
    }
}

// SAFETY: every call is forwarded to `System` with the same layout; the accounting only decides
// whether to forward an allocation at all (returning null is the documented failure signal).
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !charge(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !charge(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        refund(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            if !charge(new_size - old) {
                return std::ptr::null_mut();
            }
        } else {
            refund(old - new_size);
        }
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        if out.is_null() && new_size > old {
            refund(new_size - old);
        }
        out
    }
}

// ------------------------------------------------------------------------------------------------
// Panics

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<(String, Backtrace)>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records panics on fuzz worker threads instead of printing
/// them (thousands of expected-looking messages would bury the summary) and leaves every other
/// thread's panics to the previous hook, so other tests in this binary report as usual.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic payload)".into());
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                // Captured unresolved: symbolising costs milliseconds, so it is done only for
                // the first input of each distinct crash.
                let backtrace = Backtrace::force_capture();
                LAST_PANIC.with(|p| {
                    *p.borrow_mut() =
                        Some((format!("panicked at {location}:\n{payload}"), backtrace))
                });
            } else {
                previous(info);
            }
        }));
    });
}

// ------------------------------------------------------------------------------------------------
// Random numbers

/// SplitMix64: small, fast and the same on every platform, so a seed names one exact run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ------------------------------------------------------------------------------------------------
// Targets

/// How a part of an input is structured, which decides the format-aware mutations it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One byte choosing a variant (task, split, base model); mutated as a whole.
    Selector,
    /// Line-oriented text (TSV, submission files).
    Text,
    /// One JSON document.
    Json,
    /// JSON lines.
    JsonLines,
    /// TOML.
    Toml,
    /// A safetensors file: 8-byte little-endian header length, JSON header, data.
    Safetensors,
    /// Opaque binary (Burn's bincode records).
    Binary,
}

/// One file (or selector) of a target's input.
#[derive(Clone, Copy, Debug)]
pub struct Part {
    /// File name it is written under in the work folder and in a saved crash folder.
    pub file: &'static str,
    pub kind: Kind,
}

/// An input: one byte string per [`Part`].
pub type Input = Vec<Vec<u8>>;

/// What the main thread needs of a target: its files, valid seeds and format tokens.
pub struct Spec {
    pub name: &'static str,
    pub parts: Vec<Part>,
    pub seeds: Vec<Input>,
    /// More starting inputs that need not load (the repository's malformed-file fixtures).
    pub extra: Vec<Input>,
    /// Format tokens (keys, keywords, numbers) inserted and overwritten by the mutations.
    pub dictionary: Vec<Vec<u8>>,
    /// A human-readable note on an input for crash reports (e.g. the task its selector picks).
    pub describe: fn(&[Vec<u8>]) -> String,
}

/// A loader under test. `run` returns the outcome: `Ok` with a short description of what was
/// accepted (from a small set of values: each new one joins the corpus), or `Err` with the
/// loader's error; both steer the corpus. A panic is a crash.
pub trait Target: Send + 'static {
    fn spec(&self) -> Spec;
    fn run(&mut self, input: &[Vec<u8>], work: &Path) -> Result<String, String>;
}

/// Writes each part of `input` under `dir` with its file name (selectors as one decimal line).
pub fn write_parts(dir: &Path, parts: &[Part], input: &[Vec<u8>]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (part, bytes) in parts.iter().zip(input) {
        let path = dir.join(part.file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Mutations

/// Parts grow through insertions and splices; past this they are cut back.
const MAX_PART: usize = 1 << 20;

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'\n', b'\r', b'\t', b' ', b'"', b'\'', b'\\', b'{', b'}', b'[', b']',
    b',', b':', b'=', b'.', b'-', b'+', b'0', b'9', b'e', b'#', 0xc3, 0xe2,
];

/// Numbers that break parsers: overflow, infinities, NaN, negative zero, extremes of each width.
const NUMBER_TOKENS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "7",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1e309",
    "-1e309",
    "1e-400",
    "1e38",
    "3.5e38",
    "1.0",
    "0.5",
    "-0.5",
    "5.000001",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "0x10",
    "1_000",
    "00",
    "+1",
    ".5",
    "5.",
    "1e",
];

const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xfffe,
    0xffff,
    0x1_0000,
    100_000_000,
    100_000_001,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 7,
    u64::MAX,
];

fn interesting_json(rng: &mut Rng, dictionary: &[Vec<u8>]) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => Value::from(0),
        3 => Value::from(-1),
        4 => Value::from(*rng.pick(INTERESTING_U64)),
        5 => Value::from(i64::MIN),
        6 => serde_json::Number::from_f64(*rng.pick(&[0.5, -0.5, 1e300, -1e300, 1e-320, 5.0001]))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        7 => Value::String(String::new()),
        8 => Value::String("x".repeat(1 + rng.below(4096))),
        9 => Value::Array(Vec::new()),
        10 => Value::Object(Default::default()),
        11 => Value::Array(vec![Value::from(rng.below(4)), Value::from(rng.below(4))]),
        12 => Value::from(rng.below(10)),
        _ => {
            if dictionary.is_empty() {
                Value::String("\u{0}".into())
            } else {
                let token =
                    String::from_utf8_lossy(&dictionary[rng.below(dictionary.len())]).into_owned();
                Value::String(token.trim_matches('"').to_string())
            }
        }
    }
}

/// A JSON-pointer-like path to a node.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn collect_paths(value: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    if out.len() >= 4096 {
        return;
    }
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(Seg::Key(k.clone()));
                collect_paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(Seg::Index(i));
                collect_paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(root: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut node = root;
    for seg in path {
        node = match (seg, node) {
            (Seg::Key(k), Value::Object(map)) => map.get_mut(k)?,
            (Seg::Index(i), Value::Array(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Dictionary entries that look like keys (`"name"` or bare identifiers).
fn dictionary_keys(dictionary: &[Vec<u8>]) -> Vec<String> {
    dictionary
        .iter()
        .filter_map(|t| std::str::from_utf8(t).ok())
        .map(|t| t.trim_matches('"'))
        .filter(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '#' | ' '))
        })
        .map(str::to_string)
        .collect()
}

/// One change to a parsed JSON document: a node replaced, removed, duplicated or its number
/// nudged, or a key added.
fn mutate_json_value(root: &mut Value, rng: &mut Rng, dictionary: &[Vec<u8>]) {
    let mut paths = Vec::new();
    collect_paths(root, &mut Vec::new(), &mut paths);
    let path = rng.pick(&paths).clone();
    let op = rng.below(8);
    // Removal and duplication act on the parent.
    if matches!(op, 0 | 1) && !path.is_empty() {
        let (last, parent_path) = path.split_last().expect("non-empty");
        if let Some(parent) = node_mut(root, parent_path) {
            match (parent, last) {
                (Value::Object(map), Seg::Key(k)) => {
                    if op == 0 {
                        map.remove(k);
                    } else if let Some(v) = map.get(k).cloned() {
                        let keys = dictionary_keys(dictionary);
                        let name = if keys.is_empty() {
                            format!("{k}_")
                        } else {
                            rng.pick(&keys).clone()
                        };
                        map.insert(name, v);
                    }
                }
                (Value::Array(items), Seg::Index(i)) => {
                    if op == 0 {
                        items.remove(*i);
                    } else {
                        let v = items[*i].clone();
                        items.insert(*i, v);
                    }
                }
                _ => {}
            }
        }
        return;
    }
    let Some(node) = node_mut(root, &path) else {
        return;
    };
    match op {
        2 => {
            if let Value::Object(map) = node {
                let keys = dictionary_keys(dictionary);
                if !keys.is_empty() {
                    map.insert(rng.pick(&keys).clone(), interesting_json(rng, dictionary));
                    return;
                }
            }
            *node = interesting_json(rng, dictionary);
        }
        3 => {
            // Nudge numbers: off by one, sign, scale; the boundaries loaders check.
            if let Some(n) = node.as_i64() {
                let v = match rng.below(5) {
                    0 => n.wrapping_add(1),
                    1 => n.wrapping_sub(1),
                    2 => n.wrapping_neg(),
                    3 => n.wrapping_mul(1 << rng.below(40)),
                    _ => 0,
                };
                *node = Value::from(v);
            } else if let Some(n) = node.as_u64() {
                *node = Value::from(n.wrapping_add(1 + rng.below(3) as u64));
            } else if let Some(f) = node.as_f64() {
                let v = match rng.below(4) {
                    0 => -f,
                    1 => f * 1e10,
                    2 => f / 1e10,
                    _ => f + 1.0,
                };
                *node = serde_json::Number::from_f64(v)
                    .map(Value::Number)
                    .unwrap_or(Value::Null);
            } else {
                *node = interesting_json(rng, dictionary);
            }
        }
        4 => {
            // Change the type but keep the content recognisable.
            *node = match node.take() {
                Value::String(s) => s
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Array(vec![Value::String(s)])),
                Value::Number(n) => Value::String(n.to_string()),
                Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
                other => Value::Array(vec![other]),
            };
        }
        _ => *node = interesting_json(rng, dictionary),
    }
}

fn mutate_json_text(bytes: &mut Vec<u8>, rng: &mut Rng, dictionary: &[Vec<u8>]) -> bool {
    let Ok(mut value) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    for _ in 0..1 + rng.below(3) {
        mutate_json_value(&mut value, rng, dictionary);
    }
    *bytes = if rng.chance(50) {
        serde_json::to_vec_pretty(&value)
    } else {
        serde_json::to_vec(&value)
    }
    .unwrap_or_default();
    true
}

fn line_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            spans.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < bytes.len() {
        spans.push((start, bytes.len()));
    }
    spans
}

fn mutate_json_lines(bytes: &mut Vec<u8>, rng: &mut Rng, dictionary: &[Vec<u8>]) -> bool {
    let spans = line_spans(bytes);
    if spans.is_empty() {
        return false;
    }
    let (start, end) = *rng.pick(&spans);
    let mut line = bytes[start..end].to_vec();
    let newline = line.last() == Some(&b'\n');
    if newline {
        line.pop();
    }
    if !mutate_json_text(&mut line, rng, dictionary) {
        return false;
    }
    // One JSON document per line: pretty printing would split it.
    line.retain(|&b| b != b'\n');
    if newline {
        line.push(b'\n');
    }
    bytes.splice(start..end, line);
    true
}

/// TOML values that break deserialisers: wrong types, overflow, non-finite floats, dates.
const TOML_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "1e309",
    "inf",
    "-inf",
    "nan",
    "-0.0",
    "0.5",
    "1.0",
    "2e-5",
    "true",
    "\"\"",
    "\"x\"",
    "\"fft\"",
    "\"lora\"",
    "\"kd-lora\"",
    "\"kd\"",
    "\"sst2\"",
    "\"stsb\"",
    "\"mnli\"",
    "\"learner\"",
    "\"loop\"",
    "\"${KDLORA_SHARED}/x\"",
    "\"${UNSET_VARIABLE_FOR_FUZZ}\"",
    "\"${\"",
    "\"gaussian\"",
    "\"kaiming_uniform\"",
    "\".*\"",
    "\"(\"",
    "\"(a+)+$\"",
    "[]",
    "[\"query\", \"value\"]",
    "[1, \"x\"]",
    "{}",
    "{ r = 0 }",
    "1979-05-27T07:32:00Z",
    "'''\nx'''",
];

fn mutate_toml(bytes: &mut Vec<u8>, rng: &mut Rng, dictionary: &[Vec<u8>]) -> bool {
    let spans = line_spans(bytes);
    let keys = dictionary_keys(dictionary);
    match rng.below(5) {
        // A new `key = value` line (keys from the dictionary, dotted or inside a table).
        0 | 1 if !keys.is_empty() => {
            let line = format!("{} = {}\n", rng.pick(&keys), rng.pick(TOML_VALUES));
            let at = if spans.is_empty() {
                0
            } else {
                rng.pick(&spans).0
            };
            bytes.splice(at..at, line.into_bytes());
        }
        // A value replaced after its `=`.
        2 if !spans.is_empty() => {
            let (start, end) = *rng.pick(&spans);
            if let Some(eq) = bytes[start..end].iter().position(|&b| b == b'=') {
                let value = format!(" {}\n", rng.pick(TOML_VALUES));
                bytes.splice(start + eq + 1..end, value.into_bytes());
            } else {
                return false;
            }
        }
        // A line removed or duplicated.
        3 if !spans.is_empty() => {
            let (start, end) = *rng.pick(&spans);
            if rng.chance(50) {
                bytes.drain(start..end);
            } else {
                let line = bytes[start..end].to_vec();
                let at = rng.pick(&spans).0;
                bytes.splice(at..at, line);
            }
        }
        // A table header.
        _ => {
            let table = *rng.pick(&["[lora]\n", "[kd]\n", "[[lora]]\n", "[x]\n", "[lora.kd]\n"]);
            let at = if spans.is_empty() {
                0
            } else {
                rng.pick(&spans).0
            };
            bytes.splice(at..at, table.bytes());
        }
    }
    true
}

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F4", "f32", "",
];

/// A safetensors header mutated as data: tensor shapes, dtypes, offsets and names edited, then
/// written back with a consistent length prefix (so the change reaches the checks behind it);
/// or the length prefix itself overwritten.
fn mutate_safetensors(bytes: &mut Vec<u8>, rng: &mut Rng, dictionary: &[Vec<u8>]) -> bool {
    if bytes.len() < 8 {
        return false;
    }
    let declared = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if rng.chance(15) {
        let total = bytes.len() as u64;
        let value = match rng.below(4) {
            0 => *rng.pick(INTERESTING_U64),
            1 => declared.wrapping_add(1 + rng.below(16) as u64),
            2 => declared.wrapping_sub(1 + rng.below(16) as u64),
            _ => total.wrapping_sub(rng.below(16) as u64),
        };
        bytes[..8].copy_from_slice(&value.to_le_bytes());
        return true;
    }
    let Some(end) = usize::try_from(declared)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= bytes.len())
    else {
        return false;
    };
    let Ok(mut header) = serde_json::from_slice::<Value>(&bytes[8..end]) else {
        return false;
    };
    let mut data = bytes[end..].to_vec();
    let names: Vec<String> = header
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if names.is_empty() || rng.chance(25) {
        mutate_json_value(&mut header, rng, dictionary);
    } else {
        let name = rng.pick(&names).clone();
        let map = header.as_object_mut().expect("object");
        let entry = map.get_mut(&name).expect("present");
        // A tensor entry that an earlier mutation turned into a non-object is edited as JSON.
        let fields = entry.as_object_mut();
        match (rng.below(9), fields) {
            (0, Some(fields)) => {
                fields.insert("dtype".into(), Value::from(*rng.pick(DTYPES)));
            }
            (1, Some(fields)) => {
                let dims: Vec<Value> = (0..rng.below(4))
                    .map(|_| match rng.below(4) {
                        0 => Value::from(*rng.pick(INTERESTING_U64)),
                        1 => Value::from(-1),
                        _ => Value::from(rng.below(40)),
                    })
                    .collect();
                fields.insert("shape".into(), Value::Array(dims));
            }
            (2, Some(fields)) => {
                // Shape dims swapped or one multiplied: same element count or not.
                if let Some(Value::Array(dims)) = fields.get_mut("shape")
                    && !dims.is_empty()
                {
                    let i = rng.below(dims.len());
                    if rng.chance(50) {
                        dims.reverse();
                    } else {
                        let n = dims[i].as_u64().unwrap_or(1);
                        dims[i] = Value::from(n.wrapping_mul(1 + rng.below(3) as u64));
                    }
                }
            }
            (3, Some(fields)) => {
                let len = data.len() as u64;
                let (a, b) = match rng.below(5) {
                    0 => (0, len),
                    1 => (len, 0),
                    2 => (0, *rng.pick(INTERESTING_U64)),
                    3 => (*rng.pick(INTERESTING_U64), len),
                    _ => {
                        let a = rng.below(len as usize + 1) as u64;
                        (a, a + rng.below(64) as u64)
                    }
                };
                fields.insert("data_offsets".into(), serde_json::json!([a, b]));
            }
            (0..=3, None) => mutate_json_value(entry, rng, dictionary),
            (4, _) => {
                // The tensor under another name (a dictionary key, or a different known name).
                let value = map.remove(&name).expect("present");
                let keys = dictionary_keys(dictionary);
                let new_name = if !keys.is_empty() && rng.chance(50) {
                    rng.pick(&keys).clone()
                } else {
                    format!(
                        "{}{}",
                        rng.pick(&names),
                        rng.pick(&["", ".", "x", ".weight"])
                    )
                };
                map.insert(new_name, value);
            }
            (5, _) => {
                let value = map.get(&name).expect("present").clone();
                map.insert(format!("{name}.dup"), value);
            }
            (6, _) => {
                // Metadata, which the teacher-logit store relies on.
                let meta = map
                    .entry("__metadata__")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(meta) = meta {
                    let keys = dictionary_keys(dictionary);
                    let key = if keys.is_empty() || rng.chance(30) {
                        meta.keys()
                            .nth(rng.below(meta.len().max(1)))
                            .cloned()
                            .unwrap_or_else(|| "format".into())
                    } else {
                        rng.pick(&keys).clone()
                    };
                    let value = match rng.below(3) {
                        0 => Value::from(*rng.pick(NUMBER_TOKENS)),
                        1 => Value::from(rng.below(8).to_string()),
                        _ => interesting_json(rng, dictionary),
                    };
                    meta.insert(key, value);
                }
            }
            (7, _) => {
                map.remove(&name);
            }
            _ => {
                // The data section cut, extended or overwritten.
                match rng.below(3) {
                    0 => data.truncate(rng.below(data.len() + 1)),
                    1 => data.extend(std::iter::repeat_n(0u8, 1 + rng.below(64))),
                    _ if !data.is_empty() => {
                        let i = rng.below(data.len());
                        data[i] = rng.next_u64() as u8;
                    }
                    _ => {}
                }
            }
        }
    }
    let mut text = serde_json::to_vec(&header).unwrap_or_default();
    // The format pads the header to 8 bytes; most files obey, some writers do not.
    if rng.chance(80) {
        text.resize(text.len().next_multiple_of(8), b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    *bytes = out;
    true
}

/// bincode varint prefixes (251: u16, 252: u32, 253: u64, 254: u128 follows) with a value: the
/// length and count fields of Burn's records.
fn mutate_bincode(bytes: &mut Vec<u8>, rng: &mut Rng) -> bool {
    if bytes.is_empty() {
        return false;
    }
    let at = rng.below(bytes.len());
    let mut field = match rng.below(4) {
        0 => vec![251, rng.next_u64() as u8, rng.next_u64() as u8],
        1 => {
            let mut f = vec![252];
            f.extend_from_slice(&(*rng.pick(INTERESTING_U64) as u32).to_le_bytes());
            f
        }
        2 => {
            let mut f = vec![253];
            f.extend_from_slice(&rng.pick(INTERESTING_U64).to_le_bytes());
            f
        }
        _ => vec![rng.below(251) as u8],
    };
    // Overwrite in place (the varint replaces a field) or insert (shifts everything after).
    if rng.chance(50) {
        let end = (at + field.len()).min(bytes.len());
        bytes.splice(at..end, field.drain(..));
    } else {
        bytes.splice(at..at, field);
    }
    true
}

fn random_chunk(rng: &mut Rng, bytes: &[u8]) -> (usize, usize) {
    if bytes.is_empty() {
        return (0, 0);
    }
    let start = rng.below(bytes.len());
    let max = (bytes.len() - start).min(if rng.chance(80) { 32 } else { 4096 });
    (start, start + 1 + rng.below(max))
}

/// One byte-level change: flips, interesting bytes and integers, insertions, deletions,
/// duplications, splices with another input, dictionary tokens and number tokens.
fn mutate_bytes(bytes: &mut Vec<u8>, other: &[u8], rng: &mut Rng, dictionary: &[Vec<u8>]) {
    let len = bytes.len();
    match rng.below(15) {
        0 if len > 0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(len);
                bytes[i] ^= 1 << rng.below(8);
            }
        }
        1 if len > 0 => {
            let i = rng.below(len);
            bytes[i] = *rng.pick(INTERESTING_BYTES);
        }
        2 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let new: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            bytes.splice(at..at, new);
        }
        3 if len > 0 => {
            let (a, b) = random_chunk(rng, bytes);
            bytes.drain(a..b);
        }
        4 if len > 0 => {
            // Duplicate a chunk (repeated rows, keys, fields).
            let (a, b) = random_chunk(rng, bytes);
            let chunk = bytes[a..b].to_vec();
            let at = rng.below(bytes.len() + 1);
            bytes.splice(at..at, chunk);
        }
        5 if len > 1 => {
            let (a, b) = random_chunk(rng, bytes);
            let chunk = bytes[a..b].to_vec();
            let at = rng.below(len);
            let end = (at + chunk.len()).min(len);
            bytes.splice(at..end, chunk[..end - at].iter().copied());
        }
        6 if !other.is_empty() => {
            let (a, b) = random_chunk(rng, other);
            let at = rng.below(len + 1);
            bytes.splice(at..at, other[a..b].iter().copied());
        }
        7 if !other.is_empty() => {
            // Crossover: this input's head with the other's tail.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            bytes.truncate(cut);
            bytes.extend_from_slice(&other[from..]);
        }
        8 | 9 if !dictionary.is_empty() => {
            let token = rng.pick(dictionary);
            let at = rng.below(len + 1);
            if rng.chance(50) {
                bytes.splice(at..at, token.iter().copied());
            } else {
                let end = (at + token.len()).min(len);
                bytes.splice(at..end, token.iter().copied());
            }
        }
        10 if len > 0 => {
            // A number replaced by a boundary value (digits found from a random start).
            let start = rng.below(len);
            if let Some(off) = bytes[start..].iter().position(u8::is_ascii_digit) {
                let a = start + off;
                let mut b = a;
                while b < len && (bytes[b].is_ascii_digit() || matches!(bytes[b], b'.' | b'e')) {
                    b += 1;
                }
                let a = if a > 0 && bytes[a - 1] == b'-' {
                    a - 1
                } else {
                    a
                };
                bytes.splice(a..b, rng.pick(NUMBER_TOKENS).bytes());
            } else {
                let at = rng.below(len + 1);
                bytes.splice(at..at, rng.pick(NUMBER_TOKENS).bytes());
            }
        }
        11 if len > 0 => bytes.truncate(rng.below(len)),
        12 if len > 0 => {
            let value = *rng.pick(INTERESTING_U64);
            let width = *rng.pick(&[1usize, 2, 4, 8]);
            let raw = if rng.chance(50) {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            let field = if rng.chance(50) {
                &raw[..width]
            } else {
                &raw[8 - width..]
            };
            let at = rng.below(len);
            let end = (at + width).min(len);
            bytes.splice(at..end, field[..end - at].iter().copied());
        }
        13 if len > 0 => {
            // Line-level: a line removed, duplicated or swapped with another.
            let spans = line_spans(bytes);
            if spans.len() > 1 {
                let (a0, a1) = *rng.pick(&spans);
                match rng.below(3) {
                    0 => {
                        bytes.drain(a0..a1);
                    }
                    1 => {
                        let line = bytes[a0..a1].to_vec();
                        bytes.splice(a0..a0, line);
                    }
                    _ => {
                        let (b0, b1) = *rng.pick(&spans);
                        if b0 > a1 {
                            let second = bytes[b0..b1].to_vec();
                            let first = bytes[a0..a1].to_vec();
                            bytes.splice(b0..b1, first);
                            bytes.splice(a0..a1, second);
                        }
                    }
                }
            }
        }
        _ => {
            let at = rng.below(len + 1);
            bytes.insert(at, *rng.pick(INTERESTING_BYTES));
        }
    }
}

/// A mutant of `parent`: one to four changes, each to one part (chosen by size, so a selector
/// byte is changed now and then and a large file most of the time).
pub fn mutate(parent: &Input, other: &Input, spec: &Spec, rng: &mut Rng) -> Input {
    let mut out = parent.clone();
    let max_rounds = if rng.chance(20) { 8 } else { 3 };
    let rounds = 1 + rng.below(max_rounds);
    for _ in 0..rounds {
        let weights: Vec<usize> = out.iter().map(|p| p.len().min(4096) + 64).collect();
        let total: usize = weights.iter().sum();
        let mut roll = rng.below(total);
        let mut i = 0;
        while roll >= weights[i] {
            roll -= weights[i];
            i += 1;
        }
        let kind = spec.parts[i].kind;
        let part = &mut out[i];
        let structured = match kind {
            Kind::Selector => {
                *part = vec![rng.next_u64() as u8];
                true
            }
            Kind::Json if rng.chance(50) => mutate_json_text(part, rng, &spec.dictionary),
            Kind::JsonLines if rng.chance(50) => mutate_json_lines(part, rng, &spec.dictionary),
            Kind::Toml if rng.chance(50) => mutate_toml(part, rng, &spec.dictionary),
            Kind::Safetensors if rng.chance(70) => mutate_safetensors(part, rng, &spec.dictionary),
            Kind::Binary if rng.chance(20) => mutate_bincode(part, rng),
            _ => false,
        };
        if !structured {
            mutate_bytes(part, &other[i], rng, &spec.dictionary);
        }
        part.truncate(MAX_PART);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Running

/// Settings of one fuzzing session of one target.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Stop after this many executions (short form)...
    pub max_execs: Option<u64>,
    /// ...or after this long (long form).
    pub duration: Option<Duration>,
    /// An execution running longer than this is a hang.
    pub timeout: Duration,
    /// Peak bytes one execution may allocate (on its thread) before it counts as a crash.
    pub soft_memory: usize,
    /// Where crash inputs and work files go.
    pub dir: PathBuf,
    /// Write every input to `<dir>/crashes/<target>/last-input/` before running it, so a process
    /// abort (allocation failure, stack overflow) leaves the input behind.
    pub save_each: bool,
}

/// What one session found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub target: String,
    pub seed: u64,
    pub executions: u64,
    pub seconds: f64,
    /// Distinct crashes (panics, and executions over the soft memory cap).
    pub crashes: u64,
    /// Executions that crashed (the same crash found again counts here, not above).
    pub crashing_executions: u64,
    pub hangs: u64,
    /// Inputs the loader accepted.
    pub accepted: u64,
    /// Distinct outcomes (accepted shapes and error kinds) seen.
    pub outcomes: usize,
    pub corpus: usize,
    pub slowest_ms: f64,
    pub peak_memory_mb: f64,
    /// Folders holding each distinct crash's input, its message and backtrace.
    pub crash_dirs: Vec<String>,
    /// Seeds the loader refused (a target whose valid seeds fail explores little).
    pub rejected_seeds: Vec<String>,
}

impl Report {
    /// The report as JSON (the fields `cargo xtask fuzz` reads).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "target": self.target,
            "seed": self.seed,
            "executions": self.executions,
            "seconds": self.seconds,
            "crashes": self.crashes,
            "crashing_executions": self.crashing_executions,
            "hangs": self.hangs,
            "accepted": self.accepted,
            "outcomes": self.outcomes,
            "corpus": self.corpus,
            "slowest_ms": self.slowest_ms,
            "peak_memory_mb": self.peak_memory_mb,
            "crash_dirs": self.crash_dirs,
            "rejected_seeds": self.rejected_seeds,
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "fuzz {}: {} executions in {:.1} s ({:.0}/s), {} crashes, {} hangs, {:.1}% accepted, \
             {} outcomes, corpus {}, slowest {:.1} ms, peak {:.1} MiB, seed {:#x}",
            self.target,
            self.executions,
            self.seconds,
            self.executions as f64 / self.seconds.max(1e-9),
            self.crashes,
            self.hangs,
            100.0 * self.accepted as f64 / (self.executions.max(1) as f64),
            self.outcomes,
            self.corpus,
            self.slowest_ms,
            self.peak_memory_mb,
            self.seed
        )
    }
}

enum Outcome {
    Accepted(String),
    Rejected(String),
    Panicked(String, Option<Backtrace>),
}

struct Done {
    input: Input,
    outcome: Outcome,
    elapsed: Duration,
    peak: usize,
}

/// The outcome's signature: the first words of the message outside quotes and backticks (which
/// hold echoed input, escapes included), without numbers or punctuation, so "line 3: unknown
/// label \"x\"" and "line 7: unknown label \"y\"" are one outcome. Finer signatures (a hash of
/// the echoed text) made nearly every input new and churned the corpus.
fn signature(message: &str) -> u64 {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in message.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            words.push(std::mem::take(&mut word));
            if words.len() == 12 {
                break;
            }
        }
        if matches!(c, '"' | '`') {
            quote = Some(c);
        }
    }
    if !word.is_empty() && words.len() < 12 {
        words.push(word);
    }
    let mut h = DefaultHasher::new();
    words.hash(&mut h);
    h.finish()
}

/// Distinct crashes: by location and message, numbers in the message collapsed (an index out of
/// bounds is one crash whatever the index); the backtrace is not part of it.
fn crash_key(message: &str) -> u64 {
    let (location, rest) = message.split_once('\n').unwrap_or((message, ""));
    let mut h = DefaultHasher::new();
    location.hash(&mut h);
    signature(rest).hash(&mut h);
    h.finish()
}

fn save_crash(
    opts: &Options,
    spec: &Spec,
    input: &Input,
    message: &str,
    key: u64,
) -> std::io::Result<PathBuf> {
    let dir = opts
        .dir
        .join("crashes")
        .join(spec.name)
        .join(format!("{key:016x}"));
    write_parts(&dir, &spec.parts, input)?;
    let note = (spec.describe)(input);
    let files: Vec<&str> = spec.parts.iter().map(|p| p.file).collect();
    std::fs::write(
        dir.join("CRASH.txt"),
        format!(
            "target: {}\nseed: {:#x}\ninput files here: {}\n{note}\n\n{message}\n",
            spec.name,
            opts.seed,
            files.join(", ")
        ),
    )?;
    Ok(dir)
}

/// Fuzzes one target until `opts` says stop (or a hang: a stuck worker cannot be stopped, so the
/// session ends there).
pub fn fuzz(mut target: Box<dyn Target>, opts: &Options) -> Report {
    install_panic_hook();
    let spec = target.spec();
    assert!(
        !spec.seeds.is_empty(),
        "{}: a target needs valid seeds",
        spec.name
    );
    let mut rng = Rng::new(opts.seed ^ name_hash(spec.name));
    let work_root = opts.dir.join("work");
    std::fs::create_dir_all(&work_root).expect("creating the fuzz work folder");
    let work = tempfile::Builder::new()
        .prefix(&format!("{}-", spec.name))
        .tempdir_in(&work_root)
        .expect("creating the work folder");
    let work_path = work.path().to_path_buf();

    let (job_tx, job_rx) = mpsc::channel::<Input>();
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let hard_cap = opts.soft_memory.saturating_mul(4);
    std::thread::Builder::new()
        .name(format!("fuzz-{}", spec.name))
        // The CLI's main thread has 8 MiB; a parser recursing deeper than that is a finding.
        .stack_size(8 << 20)
        .spawn(move || {
            // Loaders log warnings on bad input; millions of them would bury the summary.
            let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::new());
            QUIET.with(|q| q.set(true));
            while let Ok(input) = job_rx.recv() {
                let start = Instant::now();
                LIVE.with(|l| l.set(0));
                PEAK.with(|p| p.set(0));
                HARD_CAP.with(|c| c.set(hard_cap));
                let result =
                    panic::catch_unwind(AssertUnwindSafe(|| target.run(&input, &work_path)));
                HARD_CAP.with(|c| c.set(0));
                let peak = PEAK.with(Cell::get).max(0) as usize;
                let elapsed = start.elapsed();
                let outcome = match result {
                    Ok(Ok(s)) => Outcome::Accepted(s),
                    Ok(Err(e)) => Outcome::Rejected(e),
                    Err(payload) => match LAST_PANIC.with(|p| p.borrow_mut().take()) {
                        Some((message, backtrace)) => Outcome::Panicked(message, Some(backtrace)),
                        None => Outcome::Panicked(
                            payload
                                .downcast_ref::<String>()
                                .cloned()
                                .unwrap_or_else(|| "panic".into()),
                            None,
                        ),
                    },
                };
                if done_tx
                    .send(Done {
                        input,
                        outcome,
                        elapsed,
                        peak,
                    })
                    .is_err()
                {
                    break;
                }
            }
        })
        .expect("spawning the fuzz worker");

    let mut corpus: Vec<Input> = spec.seeds.iter().chain(&spec.extra).cloned().collect();
    let corpus_bytes = |c: &[Input]| c.iter().flatten().map(Vec::len).sum::<usize>();
    let fixed = corpus.len();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut crash_keys: HashSet<u64> = HashSet::new();
    let mut report = Report {
        target: spec.name.to_string(),
        seed: opts.seed,
        ..Report::default()
    };
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut peak_memory = 0usize;
    let last_input_dir = opts.dir.join("crashes").join(spec.name).join("last-input");
    let mut next_progress = Duration::from_secs(60);
    // The seeds run first, unmutated: a seed that fails to load is a broken target.
    let mut pending_seeds = spec.seeds.len();
    loop {
        if opts.max_execs.is_some_and(|n| report.executions >= n)
            || opts.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        let is_seed = pending_seeds > 0;
        let input = if is_seed {
            pending_seeds -= 1;
            spec.seeds[spec.seeds.len() - 1 - pending_seeds].clone()
        } else {
            let parent = if rng.chance(20) {
                rng.pick(&spec.seeds)
            } else {
                rng.pick(&corpus)
            };
            let other = rng.pick(&corpus);
            mutate(parent, other, &spec, &mut rng)
        };
        if opts.save_each {
            let _ = write_parts(&last_input_dir, &spec.parts, &input);
        }
        job_tx.send(input).expect("fuzz worker alive");
        let done = match done_rx.recv_timeout(opts.timeout) {
            Ok(done) => done,
            Err(_) => {
                report.hangs += 1;
                report.executions += 1;
                // The input is still with the stuck worker: the last one sent is the hang; it
                // is rebuilt from the same seed by rerunning with KDLORA_FUZZ_SAVE_EACH=1.
                eprintln!(
                    "fuzz {}: an execution ran over {:?} (hang); rerun with KDLORA_FUZZ_SEED={:#x} \
                     KDLORA_FUZZ_SAVE_EACH=1 to keep the input in {}",
                    spec.name,
                    opts.timeout,
                    opts.seed,
                    last_input_dir.display()
                );
                break;
            }
        };
        report.executions += 1;
        slowest = slowest.max(done.elapsed);
        peak_memory = peak_memory.max(done.peak);
        let (sig, crash) = match &done.outcome {
            Outcome::Accepted(s) => {
                report.accepted += 1;
                // The targets' own summaries: few values, each worth telling apart.
                let mut h = DefaultHasher::new();
                s.hash(&mut h);
                (h.finish(), None)
            }
            Outcome::Rejected(e) => {
                if is_seed {
                    report.rejected_seeds.push(e.clone());
                }
                (signature(e), None)
            }
            Outcome::Panicked(m, _) => (0, Some(m.clone())),
        };
        let crash = crash.or_else(|| {
            (done.peak > opts.soft_memory).then(|| {
                format!(
                    "allocated {:.1} MiB in one execution (soft cap {:.0} MiB, \
                     KDLORA_FUZZ_MEMORY_MB) for an input of {} bytes",
                    done.peak as f64 / (1 << 20) as f64,
                    opts.soft_memory as f64 / (1 << 20) as f64,
                    done.input.iter().map(Vec::len).sum::<usize>()
                )
            })
        });
        if let Some(message) = crash {
            report.crashing_executions += 1;
            let key = crash_key(&message);
            if crash_keys.insert(key) {
                report.crashes += 1;
                let full = match &done.outcome {
                    Outcome::Panicked(_, Some(bt)) => format!("{message}\n\nbacktrace:\n{bt}"),
                    _ => message.clone(),
                };
                match save_crash(opts, &spec, &done.input, &full, key) {
                    Ok(dir) => {
                        let first = message.lines().take(2).collect::<Vec<_>>().join(" ");
                        eprintln!(
                            "fuzz {}: CRASH saved in {}: {first}",
                            spec.name,
                            dir.display()
                        );
                        report.crash_dirs.push(dir.display().to_string());
                    }
                    Err(e) => eprintln!("fuzz {}: CRASH (could not save: {e})", spec.name),
                }
            }
            continue;
        }
        if seen.insert(sig) && !is_seed {
            // New outcome: keep the input as a parent. The corpus is bounded in entries and
            // bytes; past that a random non-seed entry gives way.
            if corpus.len() < 2000 && corpus_bytes(&corpus) < 64 << 20 {
                corpus.push(done.input);
            } else if corpus.len() > fixed {
                let i = fixed + rng.below(corpus.len() - fixed);
                corpus[i] = done.input;
            }
        }
        if opts.duration.is_some() && start.elapsed() >= next_progress {
            next_progress += Duration::from_secs(60);
            eprintln!(
                "fuzz {}: {} executions, {} crashes, {} outcomes, corpus {} after {:.0} s",
                spec.name,
                report.executions,
                report.crashes,
                seen.len(),
                corpus.len(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.outcomes = seen.len();
    report.corpus = corpus.len();
    report.slowest_ms = slowest.as_secs_f64() * 1e3;
    report.peak_memory_mb = peak_memory as f64 / (1 << 20) as f64;
    drop(job_tx);
    if report.hangs > 0 {
        // The stuck worker still uses the work folder: leave it.
        std::mem::forget(work);
    }
    report
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across Rust versions (DefaultHasher is not guaranteed to be).
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn signatures_ignore_echoed_values_and_numbers() {
    let a = signature("data:3: unknown label \"x\\\"y 7\" for cola");
    let b = signature("data:17: unknown label \"-\" for cola");
    assert_eq!(a, b);
    assert_ne!(
        signature("data:3: missing label"),
        signature("data:3: empty line")
    );
}

#[test]
fn mutations_depend_only_on_the_seed() {
    let spec = Spec {
        name: "t",
        parts: vec![
            Part {
                file: "s",
                kind: Kind::Selector,
            },
            Part {
                file: "j",
                kind: Kind::Json,
            },
        ],
        seeds: vec![vec![vec![1], br#"{"a": [1, 2], "b": "c"}"#.to_vec()]],
        extra: Vec::new(),
        dictionary: vec![b"key".to_vec()],
        describe: |_| String::new(),
    };
    let run = |seed| {
        let mut rng = Rng::new(seed);
        (0..200)
            .map(|_| mutate(&spec.seeds[0], &spec.seeds[0], &spec, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}
