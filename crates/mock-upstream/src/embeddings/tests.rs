//! OpenAI's embeddings on a real socket: input shapes, dimensions,
//! determinism, base64, refusals.

use serde_json::{Value, json};

use super::{base64, embedding};
use crate::{Behavior, Fault, MockUpstream, test_support};

fn url(mock: &MockUpstream) -> String {
    format!("{}/embeddings", mock.base_url())
}

fn vector(value: &Value) -> Vec<f32> {
    test_support::floats(value)
}

#[tokio::test]
async fn each_input_gets_its_deterministic_vector_of_the_models_length() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("emb", Behavior { embedding_dimensions: 16, ..Behavior::default() });
    let (status, body) =
        test_support::call(&url(&mock), &[], &json!({"model": "emb", "input": ["cat", "dog", "cat"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["object"].as_str(), body["model"].as_str()), (Some("list"), Some("emb")));
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(data.iter().enumerate().all(|(i, d)| d["index"] == i && d["object"] == "embedding"));
    let vectors: Vec<Vec<f32>> = data.iter().map(|d| vector(&d["embedding"])).collect();
    assert_eq!(vectors[0], embedding("emb", "cat", 16));
    assert_eq!(vectors[0], vectors[2]);
    assert_ne!(vectors[0], vectors[1]);
    assert_eq!(body["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    // Another model embeds the same text elsewhere; the default length is 1536.
    let (_, body) = test_support::call(&url(&mock), &[], &json!({"model": "other", "input": "cat"})).await;
    let other = vector(&body["data"][0]["embedding"]);
    assert_eq!(other.len(), 1536);
    assert_ne!(other[..16], vectors[0][..]);
    mock.shutdown().await;
}

#[tokio::test]
async fn dimensions_shorten_a_vector_to_its_rescaled_start() {
    let mock = MockUpstream::start().await.unwrap();
    let (_, body) =
        test_support::call(&url(&mock), &[], &json!({"model": "emb", "input": "cat", "dimensions": 4})).await;
    let short = vector(&body["data"][0]["embedding"]);
    let long = embedding("emb", "cat", 1536);
    let scale = short[0] / long[0];
    assert!(short.iter().zip(&long).all(|(s, l)| (s - l * scale).abs() < 1e-5), "{short:?}");
    let norm: f32 = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    mock.shutdown().await;
}

#[tokio::test]
async fn base64_vectors_are_the_little_endian_floats() {
    let mock = MockUpstream::start().await.unwrap();
    let body = json!({"model": "emb", "input": [[1, 2, 3]], "encoding_format": "base64", "dimensions": 5});
    let (_, answer) = test_support::call(&url(&mock), &[], &body).await;
    let expect = embedding("emb", "1,2,3", 5);
    assert_eq!(answer["data"][0]["embedding"], base64(&expect));
    assert_eq!(answer["usage"]["prompt_tokens"], 3);
    mock.shutdown().await;
}

#[test]
fn base64_pads_as_the_standard_says() {
    let check = |bytes: &[u8], expect: &str| {
        let floats: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(base64(&floats), expect);
    };
    check(&[0, 0, 128, 63], "AACAPw==");
    check(&[0, 0, 128, 63, 0, 0, 0, 64], "AACAPwAAAEA=");
    check(&[255, 255, 255, 255, 0, 0, 0, 0, 1, 2, 3, 4], "/////wAAAAABAgME");
}

#[tokio::test]
async fn inputs_and_options_it_cannot_read_get_a_400_and_faults_apply() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("emb", Behavior { embedding_dimensions: 8, ..Behavior::default() });
    for (body, param) in [
        (json!({"model": "emb"}), "input"),
        (json!({"model": "emb", "input": []}), "input"),
        (json!({"model": "emb", "input": [1, "x"]}), "input"),
        (json!({"model": "emb", "input": {"text": "x"}}), "input"),
        (json!({"model": "emb", "input": "x", "dimensions": 9}), "dimensions"),
        (json!({"model": "emb", "input": "x", "dimensions": 0}), "dimensions"),
        (json!({"model": "emb", "input": "x", "encoding_format": "hex"}), "encoding_format"),
    ] {
        let (status, error) = test_support::call(&url(&mock), &[], &body).await;
        assert_eq!((status, error["error"]["param"].as_str()), (400, Some(param)), "{body}");
    }
    mock.fail_next("emb", Fault::ServerError, 1);
    let (status, _) = test_support::call(&url(&mock), &[], &json!({"model": "emb", "input": "x"})).await;
    assert_eq!(status, 500);
    mock.fail_next("emb", Fault::Huge(50_000), 1);
    let answer = test_support::post(&url(&mock), &[], &json!({"model": "emb", "input": "x"})).await;
    assert!(answer.text().await.unwrap().len() > 50_000);
    mock.shutdown().await;
}
