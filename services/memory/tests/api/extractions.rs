//! RecordExtraction and ListExtractions: the log of background extraction.

use mesh_proto::mesh::memory::v1 as pb;
use tonic::Code;

use crate::{
    harness::bad_fields,
    memories::{user, words_app},
};

fn run(user: &str, status: pb::ExtractionStatus, error: &str) -> pb::Extraction {
    pb::Extraction {
        user_id: user.into(),
        conversation_id: uuid::Uuid::new_v4().to_string(),
        r#type: pb::ExtractionType::Context as i32,
        status: status as i32,
        items_extracted: 3,
        duration: Some(prost_types::Duration {
            seconds: 1,
            nanos: 250_000_000,
        }),
        error: error.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn runs_are_recorded_once_and_listed_newest_first() {
    let (mut app, _) = words_app().await;
    let user = user();
    let request = pb::RecordExtractionRequest {
        extraction: Some(run(&user, pb::ExtractionStatus::Succeeded, "")),
        request_id: "extract-1".into(),
    };
    let first = app
        .client
        .record_extraction(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = app
        .client
        .record_extraction(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let stored = first.extraction.unwrap();
    assert_eq!(stored.items_extracted, 3);
    assert_eq!(stored.duration.unwrap().nanos, 250_000_000);
    app.client
        .record_extraction(pb::RecordExtractionRequest {
            extraction: Some(pb::Extraction {
                r#type: pb::ExtractionType::Thread as i32,
                ..run(&user, pb::ExtractionStatus::Failed, "the model timed out")
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let listed = app
        .client
        .list_extractions(pb::ListExtractionsRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .extractions;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].error, "the model timed out");
    let threads = app
        .client
        .list_extractions(pb::ListExtractionsRequest {
            user_id: user.clone(),
            r#type: pb::ExtractionType::Thread as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .extractions;
    assert_eq!(threads.len(), 1);

    let bad = app
        .client
        .record_extraction(pb::RecordExtractionRequest {
            extraction: Some(pb::Extraction {
                user_id: "nope".into(),
                r#type: 0,
                items_extracted: -1,
                duration: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..run(&user, pb::ExtractionStatus::Failed, "")
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let mut fields = bad_fields(&bad);
    fields.sort();
    assert_eq!(
        fields,
        [
            "extraction.duration",
            "extraction.error",
            "extraction.items_extracted",
            "extraction.type",
            "extraction.user_id"
        ]
    );
    assert_eq!(app.count("extractions").await, 2);
}
