use super::*;
use crate::x402::signer::{LocalSigner, Permit};
use crate::x402::tests::reason_of;

const NOW: u64 = 1_800_000_000;
const FACILITATOR: &str = "0x1111111111111111111111111111111111111111";

fn offer() -> UptoOffer {
    UptoOffer::try_new(
        "eip155:84532",
        "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        ("USDC", "2"),
        "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        FACILITATOR,
        50_000,
        60,
        Currency::try_new("USDC", 6).unwrap(),
    )
    .unwrap()
}

fn signer() -> LocalSigner {
    LocalSigner::from_bytes(&[0x11; 32]).unwrap()
}

fn reason(p: &Value) -> String {
    reason_of(verify(p, &[offer()], NOW, 6))
}

/// A payload signed for `permit` after `edit` changed its terms (so the signature is valid
/// for what is checked).
fn signed(edit: impl FnOnce(&mut Permit)) -> Value {
    let s = signer();
    let req = offer().requirements();
    let mut p = s.permit_for(&req, NOW).unwrap();
    edit(&mut p);
    s.upto_payload(&req, &p).unwrap()
}

#[test]
fn the_official_sdk_signs_the_same_digest() {
    // Signed by x402 2.25.0's `_sign_upto_permit2_authorization` (eth_account, RFC 6979)
    // with the key 0x11..11: the same bytes prove the same EIP-712 type strings and domain.
    let s = signer();
    assert_eq!(
        s.address().to_checksum(None),
        "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
    );
    let req = offer().requirements();
    let permit = Permit {
        nonce: U256::from(12_345_678_901_234_567_890_u64),
        deadline: 1_800_000_060,
        ..s.permit_for(&req, NOW).unwrap()
    };
    let p = s.upto_payload(&req, &permit).unwrap();
    assert_eq!(
        p["payload"]["signature"],
        "0x10f41f62efb8a113849defcaa1db863fe46d42378796e90e2d9bec005a81e58a68037ada570cc00941a05466f56a19f58a925df6e21c89f1cbe9eb50d05990f41c"
    );
    let v = verify(&p, &[offer()], NOW, 6).unwrap();
    assert_eq!(
        v,
        Verified {
            offer: 0,
            from: s.address(),
            nonce: U256::from(12_345_678_901_234_567_890_u64),
            deadline: 1_800_000_060,
        }
    );
}

#[test]
fn requirements_carry_the_maximum_and_the_facilitator() {
    let r = offer().requirements();
    assert_eq!(r["scheme"], "upto");
    assert_eq!(r["amount"], "50000");
    assert_eq!(r["extra"]["assetTransferMethod"], "permit2");
    assert_eq!(r["extra"]["facilitatorAddress"], FACILITATOR);
    assert_eq!(offer().requirements_for(1234)["amount"], "1234");
}

#[test]
fn every_check_has_its_reason() {
    let good = signed(|_| {});
    assert!(verify(&good, &[offer()], NOW, 6).is_ok());
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = good.clone();
        f(&mut p);
        reason(&p)
    };
    assert_eq!(
        with(&|p| p["x402Version"] = 1.into()),
        "invalid_x402_version"
    );
    assert_eq!(
        with(&|p| p["accepted"]["scheme"] = "exact".into()),
        "invalid_upto_evm_scheme"
    );
    assert_eq!(
        with(&|p| p["accepted"]["network"] = "eip155:8453".into()),
        "invalid_upto_evm_network_mismatch"
    );
    assert_eq!(
        with(&|p| p["accepted"]["amount"] = "60000".into()),
        "invalid_payment_requirements"
    );
    assert_eq!(
        with(&|p| p["accepted"]["extra"]["facilitatorAddress"] =
            "0x2222222222222222222222222222222222222222".into()),
        "invalid_payment_requirements"
    );
    assert_eq!(
        with(&|p| p["payload"] = "x".into()),
        "invalid_permit2_payload_format"
    );
    assert_eq!(
        with(&|p| p["payload"]["permit2Authorization"]["nonce"] = "-1".into()),
        "invalid_permit2_payload_format"
    );
    assert_eq!(
        with(&|p| p["payload"]["permit2Authorization"]["from"] = "0x12".into()),
        "invalid_permit2_payload_format"
    );
    // The terms, each re-signed so that only the term is wrong.
    let other = |b: u8| Address::repeat_byte(b);
    assert_eq!(
        reason(&signed(|p| p.spender = other(3))),
        "invalid_permit2_spender"
    );
    assert_eq!(
        reason(&signed(|p| p.to = other(4))),
        "invalid_permit2_recipient_mismatch"
    );
    assert_eq!(
        reason(&signed(|p| p.facilitator = other(5))),
        "upto_facilitator_mismatch"
    );
    assert_eq!(
        reason(&signed(|p| p.deadline = NOW + 5)),
        "permit2_deadline_expired"
    );
    assert_eq!(
        reason(&signed(|p| p.deadline = NOW - 1)),
        "permit2_deadline_expired"
    );
    assert_eq!(
        reason(&signed(|p| p.deadline = NOW + 60 + 61)),
        "permit2_deadline_too_far"
    );
    assert!(verify(&signed(|p| p.deadline = NOW + 6), &[offer()], NOW, 6).is_ok());
    assert_eq!(
        reason(&signed(|p| p.valid_after = NOW + 1)),
        "permit2_not_yet_valid"
    );
    assert_eq!(
        reason(&signed(|p| p.amount = U256::from(50_001))),
        "permit2_amount_mismatch"
    );
    assert_eq!(
        reason(&signed(|p| p.amount = U256::from(49_999))),
        "permit2_amount_mismatch"
    );
    assert_eq!(
        reason(&signed(|p| p.token = other(6))),
        "permit2_token_mismatch"
    );
    // The signature: tampered terms, another chain, malformed, oversized.
    assert_eq!(
        with(&|p| p["payload"]["permit2Authorization"]["nonce"] = "7".into()),
        "invalid_permit2_signature"
    );
    let mut foreign = offer();
    foreign.chain_id = 8453;
    let p = signed(|_| {});
    assert_eq!(
        verify(&p, &[foreign], NOW, 6).unwrap_err().reason.as_str(),
        "invalid_permit2_signature"
    );
    for sig in [
        Value::from("0x"),
        Value::from("0xzz"),
        Value::from(12),
        Value::Null,
        Value::from(format!("0x{}", "ab".repeat(64))),
        Value::from(format!("0x{}", "ab".repeat(66))),
        Value::from(format!("0x{}", "ab".repeat(5000))),
    ] {
        assert_eq!(
            with(&|p| p["payload"]["signature"] = sig.clone()),
            "invalid_permit2_signature",
            "{sig}"
        );
    }
    // The payer is named once `from` is read.
    let e = verify(&signed(|p| p.to = other(4)), &[offer()], NOW, 6).unwrap_err();
    assert_eq!(e.payer, Some(signer().address()));
}

#[test]
fn bad_offers_name_their_field() {
    let c = || Currency::try_new("USDC", 6).unwrap();
    let a = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    let field = |network: &str, facilitator: &str, max: u64, timeout: u64| {
        UptoOffer::try_new(network, a, ("USDC", "2"), a, facilitator, max, timeout, c())
            .unwrap_err()
            .0
    };
    assert_eq!(field("eip155:x", FACILITATOR, 1, 60), "network");
    assert_eq!(field("eip155:1", "0x0", 1, 60), "facilitator_address");
    assert_eq!(
        field(
            "eip155:1",
            "0x0000000000000000000000000000000000000000",
            1,
            60
        ),
        "facilitator_address"
    );
    assert_eq!(field("eip155:1", FACILITATOR, 0, 60), "max");
    assert_eq!(field("eip155:1", FACILITATOR, MAX_AMOUNT + 1, 60), "max");
    assert_eq!(field("eip155:1", FACILITATOR, 1, 0), "max_timeout_secs");
}
