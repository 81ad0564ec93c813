//! The paper's published numbers (arXiv 2410.20777, Tables 1 and 2), shown beside the `paper` preset.

/// Table 1 (GLUE dev): (row, family, [FFT, LoRA, KD-LoRA]).
pub const TABLE1: &[(&str, &str, [f64; 3])] = &[
    ("CoLA", "BERT", [57.7, 56.9, 56.3]),
    ("CoLA", "DeBERTaV3", [67.8, 69.1, 68.1]),
    ("CoLA", "RoBERTa", [60.9, 59.4, 56.8]),
    ("MNLI-m", "BERT", [84.5, 83.4, 82.0]),
    ("MNLI-m", "DeBERTaV3", [90.3, 90.3, 88.8]),
    ("MNLI-m", "RoBERTa", [87.7, 87.2, 83.3]),
    ("MNLI-mm", "BERT", [84.9, 83.9, 82.4]),
    ("MNLI-mm", "DeBERTaV3", [90.6, 90.2, 89.0]),
    ("MNLI-mm", "RoBERTa", [87.4, 86.9, 83.4]),
    ("MRPC", "BERT", [89.0, 89.2, 88.3]),
    ("MRPC", "DeBERTaV3", [91.9, 90.9, 90.7]),
    ("MRPC", "RoBERTa", [91.1, 89.9, 89.3]),
    ("QNLI", "BERT", [91.8, 91.1, 89.7]),
    ("QNLI", "DeBERTaV3", [94.1, 94.3, 93.4]),
    ("QNLI", "RoBERTa", [92.7, 92.8, 90.7]),
    ("QQP", "BERT", [89.7, 87.9, 89.1]),
    ("QQP", "DeBERTaV3", [91.2, 90.4, 89.9]),
    ("QQP", "RoBERTa", [89.8, 88.6, 87.3]),
    ("RTE", "BERT", [71.6, 70.1, 64.0]),
    ("RTE", "DeBERTaV3", [85.0, 84.0, 78.8]),
    ("RTE", "RoBERTa", [74.8, 71.8, 65.3]),
    ("SST-2", "BERT", [92.8, 92.6, 92.0]),
    ("SST-2", "DeBERTaV3", [95.9, 96.0, 95.7]),
    ("SST-2", "RoBERTa", [94.3, 94.2, 92.9]),
    ("STS-B", "BERT", [89.5, 88.9, 88.7]),
    ("STS-B", "DeBERTaV3", [91.5, 91.1, 89.8]),
    ("STS-B", "RoBERTa", [90.8, 90.3, 87.9]),
    ("WNLI", "BERT", [56.3, 56.9, 56.3]),
    ("WNLI", "DeBERTaV3", [66.9, 56.3, 56.3]),
    ("WNLI", "RoBERTa", [56.3, 56.3, 56.3]),
    ("Score", "BERT", [80.8, 80.1, 78.9]),
    ("Score", "DeBERTaV3", [86.5, 85.3, 84.1]),
    ("Score", "RoBERTa", [82.6, 81.7, 79.3]),
];

/// Table 2 as printed: (family, method, memory MB, inference s).
pub const TABLE2: &[(&str, &str, f64, f64)] = &[
    ("BERT", "fft", 1332.0, 6.10),
    ("BERT", "lora", 463.5, 6.22),
    ("BERT", "kd-lora", 296.8, 5.36),
    ("RoBERTa", "fft", 1515.9, 7.21),
    ("RoBERTa", "lora", 531.9, 7.19),
    ("RoBERTa", "kd-lora", 358.3, 4.44),
    ("DeBERTaV3", "fft", 2234.5, 14.37),
    ("DeBERTaV3", "lora", 763.4, 15.62),
    ("DeBERTaV3", "kd-lora", 590.3, 10.38),
];

/// The paper's Table 1 cell, if it has one.
pub fn table1(row: &str, family: &str, method_index: usize) -> Option<f64> {
    TABLE1
        .iter()
        .find(|(r, f, _)| *r == row && *f == family)
        .map(|(_, _, v)| v[method_index])
}

/// The paper's Table 2 memory (MB) and inference time (s), if it has them.
pub fn table2(family: &str, method: &str) -> Option<(f64, f64)> {
    TABLE2
        .iter()
        .find(|(f, m, _, _)| *f == family && *m == method)
        .map(|(_, _, mem, t)| (*mem, *t))
}
