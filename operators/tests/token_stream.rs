//! Streaming detokenization: the pieces of a growing answer add up to the
//! decoding of the whole answer, whatever the ids.

use proptest::prelude::*;
use tokenflow_operators::LlamaModel;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_operators::tokenizer::TokenTextStream;

fn tiny() -> LlamaModel {
    let path = std::env::temp_dir().join(format!(
        "tokenflow-token-stream-{}.gguf",
        std::process::id()
    ));
    if !path.exists() {
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
    }
    LlamaModel::open(&path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn pieces_add_up_to_the_whole_decoding(ids in proptest::collection::vec(3u32..288, 0..120)) {
        let model = tiny();
        let tok = &model.tokenizer;
        let mut stream = TokenTextStream::new();
        let mut text = String::new();
        for &id in &ids {
            text.push_str(&stream.push(tok, id).unwrap());
        }
        let whole = tok.decode(&ids).unwrap();
        // Held-back bytes of an unfinished character are all that may be missing.
        prop_assert!(whole.starts_with(&text), "{text:?} is not a prefix of {whole:?}");
        prop_assert_eq!(whole.trim_end_matches('\u{FFFD}'), text.trim_end_matches('\u{FFFD}'));
    }
}
