//! The control protocol: any bytes as a request or a response payload are decoded or
//! refused; what decodes re-encodes to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchd_proto::{decode, encode, frame_len, Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(prefix) = <[u8; 4]>::try_from(data.get(..4).unwrap_or(&[])) {
        let _ = frame_len(prefix);
    }
    if let Ok(req) = decode::<Request>(data) {
        let again = encode(&req).expect("a decoded request encodes");
        assert_eq!(decode::<Request>(&again[4..]).expect("and decodes"), req);
    }
    if let Ok(resp) = decode::<Response>(data) {
        let again = encode(&resp).expect("a decoded response encodes");
        // Floats (loss ratios) may not survive a JSON round trip bit for bit; compare text.
        let back = decode::<Response>(&again[4..]).expect("and decodes");
        assert_eq!(format!("{back:?}"), format!("{resp:?}"));
    }
});
