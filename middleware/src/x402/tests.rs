use super::*;
use k256::ecdsa::SigningKey;

const NOW: u64 = 1_795_370_000;

/// The offer of the x402 `exact` EVM spec's example (Base Sepolia USDC, 0.01 USDC).
pub(crate) fn offer() -> ExactOffer {
    ExactOffer::try_new(
        "eip155:84532",
        "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "USDC",
        "2",
        "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "10000",
        60,
        Currency::try_new("USDC", 6).unwrap(),
    )
    .unwrap()
}

fn key(seed: u8) -> (SigningKey, Address) {
    let k = SigningKey::from_bytes(&[seed; 32].into()).unwrap();
    let a = Address::from_public_key(k.verifying_key());
    (k, a)
}

/// Sign an authorization (the payer's wallet, in the test).
pub(crate) fn sign(
    key: &SigningKey,
    o: &ExactOffer,
    to: Address,
    value: u64,
    valid_after: u64,
    valid_before: u64,
    nonce: B256,
) -> Value {
    let from = Address::from_public_key(key.verifying_key());
    let msg = TransferWithAuthorization {
        from,
        to,
        value: U256::from(value),
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    let digest = msg.eip712_signing_hash(&o.domain());
    let (sig, recid) = key.sign_prehash_recoverable(digest.as_slice()).unwrap();
    let mut bytes = sig.to_bytes().to_vec();
    bytes.push(27 + recid.to_byte());
    json!({
        "x402Version": 2,
        "resource": {"url": "http://x/y"},
        "accepted": o.requirements(),
        "payload": {
            "signature": format!("0x{}", alloy_primitives::hex::encode(bytes)),
            "authorization": {
                "from": from.to_checksum(None),
                "to": to.to_checksum(None),
                "value": value.to_string(),
                "validAfter": valid_after.to_string(),
                "validBefore": valid_before.to_string(),
                "nonce": nonce.to_string(),
            }
        }
    })
}

fn good() -> (Value, Address) {
    let o = offer();
    let (k, a) = key(7);
    (
        sign(
            &k,
            &o,
            o.pay_to,
            10000,
            NOW - 600,
            NOW + 60,
            B256::repeat_byte(1),
        ),
        a,
    )
}

/// The reason a payload was refused for, by either scheme's `verify`.
pub(crate) fn reason_of<T: std::fmt::Debug>(verified: Result<T, ExactError>) -> String {
    verified.unwrap_err().reason.as_str().to_owned()
}

fn reason(p: &Value) -> String {
    reason_of(verify(p, &[offer()], NOW, 6))
}

#[test]
fn accepts_a_good_authorization() {
    let (p, a) = good();
    let v = verify(&p, &[offer()], NOW, 6).unwrap();
    assert_eq!(v.from, a);
    assert_eq!(v.offer, 0);
    assert_eq!(v.nonce, B256::repeat_byte(1));
    assert_eq!(v.valid_before, NOW + 60);
    // The second offer of a route is found too.
    let mut other = offer();
    other.network = "eip155:8453".into();
    other.chain_id = 8453;
    assert_eq!(verify(&p, &[other, offer()], NOW, 6).unwrap().offer, 1);
}

#[test]
fn the_digest_matches_eip712_by_hand() {
    // Independent check of the typed-data hash: keccak of the type string, and the
    // domain separator computed field by field.
    use alloy_primitives::keccak256;
    use alloy_sol_types::SolValue;
    let o = offer();
    let type_hash = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
    );
    let msg = TransferWithAuthorization {
        from: Address::repeat_byte(1),
        to: o.pay_to,
        value: U256::from(5),
        validAfter: U256::ZERO,
        validBefore: U256::from(9),
        nonce: B256::repeat_byte(2),
    };
    let struct_hash = keccak256(
        (
            type_hash,
            msg.from,
            msg.to,
            msg.value,
            msg.validAfter,
            msg.validBefore,
            msg.nonce,
        )
            .abi_encode(),
    );
    let domain_type = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",
    );
    let sep = keccak256(
        (
            domain_type,
            keccak256("USDC"),
            keccak256("2"),
            U256::from(84532u64),
            o.asset,
        )
            .abi_encode(),
    );
    let mut buf = vec![0x19, 0x01];
    buf.extend_from_slice(sep.as_slice());
    buf.extend_from_slice(struct_hash.as_slice());
    assert_eq!(msg.eip712_signing_hash(&o.domain()), keccak256(buf));
}

#[test]
fn the_spec_example_signature_recovers() {
    // The example PaymentPayload of the x402 `exact` EVM spec (Base Sepolia USDC).
    let o = offer();
    let p = json!({
        "x402Version": 2,
        "accepted": o.requirements(),
        "payload": {
            "signature": "0x2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9ecab05ded3d6293af148b571c",
            "authorization": {
                "from": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
                "to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "value": "10000",
                "validAfter": "1740672089",
                "validBefore": "1740672154",
                "nonce": "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
            }
        }
    });
    let v = verify(&p, &[o], 1_740_672_100, 6).unwrap();
    assert_eq!(
        v.from.to_checksum(None),
        "0x857b06519E91e3A54538791bDbb0E22373e36b66"
    );
}

#[test]
fn each_failure_has_its_spec_reason() {
    let o = offer();
    let (k, _) = key(7);
    let n = B256::repeat_byte(3);
    // Value tampered after signing: the signature no longer matches.
    let (mut p, _) = good();
    p["payload"]["authorization"]["value"] = "20000".into();
    assert_eq!(reason(&p), "invalid_exact_evm_payload_signature");
    // Signed by someone else than `from`.
    let (mut p, _) = good();
    p["payload"]["authorization"]["from"] = key(8).1.to_checksum(None).into();
    assert_eq!(reason(&p), "invalid_exact_evm_payload_signature");
    // A correctly signed authorization for the wrong amount / recipient / window.
    let p = sign(&k, &o, o.pay_to, 9999, NOW - 600, NOW + 60, n);
    assert_eq!(reason(&p), "invalid_exact_evm_payload_authorization_value");
    let p = sign(&k, &o, o.pay_to, 10001, NOW - 600, NOW + 60, n);
    assert_eq!(reason(&p), "invalid_exact_evm_payload_authorization_value");
    let p = sign(
        &k,
        &o,
        Address::repeat_byte(9),
        10000,
        NOW - 600,
        NOW + 60,
        n,
    );
    assert_eq!(reason(&p), "invalid_exact_evm_payload_recipient_mismatch");
    let p = sign(&k, &o, o.pay_to, 10000, NOW + 1, NOW + 60, n);
    assert_eq!(
        reason(&p),
        "invalid_exact_evm_payload_authorization_valid_after"
    );
    let p = sign(&k, &o, o.pay_to, 10000, NOW - 600, NOW + 5, n);
    assert_eq!(
        reason(&p),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
    let p = sign(&k, &o, o.pay_to, 10000, NOW - 600, NOW - 1, n);
    assert_eq!(
        reason(&p),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
    let p = sign(&k, &o, o.pay_to, 10000, 0, NOW + 86_400 * 365, n);
    assert_eq!(
        reason(&p),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
    // Exactly at the edges: validAfter == now and validBefore == now + margin pass.
    let p = sign(&k, &o, o.pay_to, 10000, NOW, NOW + 6, n);
    assert!(verify(&p, std::slice::from_ref(&o), NOW, 6).is_ok());
    // Signed under another domain (wrong token name) while echoing our offer.
    let mut other = o.clone();
    other.name = "USD Coin".into();
    let mut p = sign(&k, &other, o.pay_to, 10000, NOW - 600, NOW + 60, n);
    p["accepted"] = o.requirements();
    assert_eq!(reason(&p), "invalid_exact_evm_payload_signature");
}

#[test]
fn accepted_must_be_one_of_our_offers() {
    let (p, _) = good();
    for (k, v) in [
        ("amount", json!("1")),
        ("payTo", json!("0x0000000000000000000000000000000000000001")),
        ("asset", json!("0x0000000000000000000000000000000000000001")),
    ] {
        let mut q = p.clone();
        q["accepted"][k] = v;
        assert_eq!(reason(&q), "invalid_payment_requirements", "{k}");
    }
    let mut q = p.clone();
    q["accepted"]["extra"]["version"] = "1".into();
    assert_eq!(reason(&q), "invalid_payment_requirements");
    let mut q = p.clone();
    q["accepted"]["network"] = "eip155:1".into();
    assert_eq!(reason(&q), "invalid_network");
    let mut q = p.clone();
    q["x402Version"] = 1.into();
    assert_eq!(reason(&q), "invalid_x402_version");
    // Addresses compare as addresses: lower-case echo is the same offer.
    let mut q = p.clone();
    q["accepted"]["payTo"] = format!("{:#x}", offer().pay_to).into();
    assert!(verify(&q, &[offer()], NOW, 6).is_ok());
}

#[test]
fn malformed_payloads_never_panic() {
    let (p, _) = good();
    for path in ["signature", "authorization"] {
        let mut q = p.clone();
        q["payload"][path] = json!(null);
        assert_eq!(reason(&q), "invalid_payload");
    }
    for (k, v) in [
        ("from", json!("0x12")),
        ("to", json!(5)),
        ("value", json!("-1")),
        ("value", json!("1e5")),
        ("validBefore", json!("0x")),
        ("nonce", json!("0x01")),
        ("nonce", json!(null)),
    ] {
        let mut q = p.clone();
        q["payload"]["authorization"][k] = v;
        assert_eq!(reason(&q), "invalid_payload", "{k}");
    }
    let mut q = p.clone();
    q["payload"]["signature"] = "0x1234".into();
    assert_eq!(reason(&q), "invalid_exact_evm_payload_signature");
    let mut q = p.clone();
    q["payload"]["signature"] = format!("0x{}", "ff".repeat(65)).into();
    assert_eq!(reason(&q), "invalid_exact_evm_payload_signature");
    assert_eq!(reason(&json!({"x402Version": 2})), "invalid_payload");
    assert_eq!(reason(&json!([])), "invalid_x402_version");
    // Hex-encoded integers are accepted (the spec allows them).
    let mut q = p.clone();
    q["payload"]["authorization"]["value"] = "0x2710".into();
    assert!(verify(&q, &[offer()], NOW, 6).is_ok());
}

#[test]
fn random_mutations_never_panic_nor_pass() {
    // A poor man's fuzzer: flip bytes of a valid payload's JSON; whatever still parses
    // must be refused or be the unchanged authorization, never a panic.
    use rand::{Rng, SeedableRng};
    let (p, from) = good();
    let text = p.to_string().into_bytes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut parsed = 0;
    for _ in 0..5000 {
        let mut t = text.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..t.len());
            t[i] = rng.gen();
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&t) {
            parsed += 1;
            if let Ok(ok) = verify(&v, &[offer()], NOW, 6) {
                // Only mutations that do not change what was signed may pass (e.g. the
                // case of a hex digit in an address or the resource URL).
                assert_eq!(ok.from, from);
                assert_eq!(ok.nonce, B256::repeat_byte(1));
            }
        }
    }
    assert!(parsed > 100, "{parsed}");
}

#[test]
fn offers_validate_their_fields() {
    let usdc = || Currency::try_new("USDC", 6).unwrap();
    let a = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    let ok = |network: &str, asset: &str, amount: &str| {
        ExactOffer::try_new(network, asset, "USDC", "2", a, amount, 60, usdc())
            .map(|_| ())
            .map_err(|e| e.0)
    };
    assert_eq!(ok("eip155:8453", a, "1"), Ok(()));
    assert_eq!(ok("eip155:x", a, "1"), Err("network"));
    assert_eq!(ok("solana:1", a, "1"), Err("network"));
    assert_eq!(
        ok(
            "eip155:8453",
            "0x036cbD53842c5426634e7929541eC2318f3dCF7e",
            "1"
        ),
        Err("asset")
    );
    assert_eq!(ok("eip155:8453", &a.to_lowercase(), "1"), Ok(()));
    for bad in ["0", "-1", "1.5", "01", "9007199254740992", ""] {
        assert_eq!(ok("eip155:8453", a, bad), Err("amount"), "{bad}");
    }
    let r = offer().requirements();
    assert_eq!(r["asset"], a);
    assert_eq!(r["amount"], "10000");
    assert_eq!(r["extra"]["name"], "USDC");
}
