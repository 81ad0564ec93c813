//! The files of a Hugging Face model folder that kdlora reads, copies and downloads besides the
//! weights. One list, so a folder kdlora writes (a full fine-tuning run's `model/`, a merged
//! adapter, a student) carries what the Hub download fetched.

/// The tokenizer kdlora loads (`tokenizers`' JSON format).
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Every tokenizer file of the supported families that a self-contained model folder carries when
/// its source has it: [`TOKENIZER_FILE`] first, then the files `transformers`' tokenizers save
/// beside it (WordPiece `vocab.txt`, byte-level BPE `vocab.json`/`merges.txt`, SentencePiece
/// models, special-token maps).
pub const TOKENIZER_FILES: &[&str] = &[
    TOKENIZER_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
];

/// [`TOKENIZER_FILES`] without [`TOKENIZER_FILE`]: the optional companions.
pub const TOKENIZER_COMPANION_FILES: &[&str] = TOKENIZER_FILES.split_at(1).1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_are_the_list_without_the_tokenizer() {
        assert_eq!(TOKENIZER_FILES[0], TOKENIZER_FILE);
        assert_eq!(TOKENIZER_COMPANION_FILES.len() + 1, TOKENIZER_FILES.len());
        assert!(!TOKENIZER_COMPANION_FILES.contains(&TOKENIZER_FILE));
    }
}
