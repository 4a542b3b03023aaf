//! The JSON reader every IdP document, JWT and the configuration go through: any bytes give a value or
//! an error inside the input, the same verdict as serde_json (but for its deeper nesting limit and its
//! refusing numbers beyond `f64`), and what it writes reads back as the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter::json;

fuzz_target!(|data: &[u8]| {
    let ours = json::parse(data);
    if let Err(e) = &ours {
        assert!(e.offset <= data.len());
        let _ = e.line_col(data);
    }
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    match (&ours, &theirs) {
        (Ok(v), Ok(t)) => {
            let written = v.to_string();
            assert_eq!(json::parse(written.as_bytes()).as_ref(), Ok(v));
            let again: serde_json::Value =
                serde_json::from_str(&written).expect("serde_json reads it");
            assert_eq!(&again, t);
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => assert!(
            e.to_string().starts_with("number out of range"),
            "serde_json refused what we accept: {e}"
        ),
        (Err(e), Ok(_)) => assert_eq!(
            e.reason, "nested too deeply",
            "we refused what serde_json accepts"
        ),
    }
});
