//! RecordToolExecution/ListToolExecutions and RecordAgentExecution/ListAgentExecutions.

use mesh_proto::mesh::conversations::v1::*;
use serde_json::json;
use tonic::Code;

use crate::harness::{TestApp, bad_fields, data, spawn_app, too_big, wamid};

fn tool(conversation_id: &str, tool_name: &str) -> ToolExecution {
    ToolExecution {
        conversation_id: conversation_id.into(),
        tool_name: tool_name.into(),
        status: ExecutionStatus::Success as i32,
        ..Default::default()
    }
}

fn agent(conversation_id: &str, agent_name: &str) -> AgentExecution {
    AgentExecution {
        conversation_id: conversation_id.into(),
        agent_name: agent_name.into(),
        status: ExecutionStatus::Success as i32,
        ..Default::default()
    }
}

async fn record_tool(
    app: &mut TestApp,
    execution: ToolExecution,
    request_id: &str,
) -> Result<ToolExecution, tonic::Status> {
    app.client
        .record_tool_execution(RecordToolExecutionRequest {
            execution: Some(execution),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().execution.unwrap())
}

async fn record_agent(
    app: &mut TestApp,
    execution: AgentExecution,
    request_id: &str,
) -> Result<AgentExecution, tonic::Status> {
    app.client
        .record_agent_execution(RecordAgentExecutionRequest {
            execution: Some(execution),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().execution.unwrap())
}

async fn list_tools(
    app: &mut TestApp,
    conversation_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ListToolExecutionsResponse, tonic::Status> {
    app.client
        .list_tool_executions(ListToolExecutionsRequest {
            conversation_id: conversation_id.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn list_agents(
    app: &mut TestApp,
    conversation_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ListAgentExecutionsResponse, tonic::Status> {
    app.client
        .list_agent_executions(ListAgentExecutionsRequest {
            conversation_id: conversation_id.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A new user's WhatsApp conversation with one inbound message: (conversation, message).
async fn conversation_with_message(app: &mut TestApp) -> (String, String) {
    let user = app.new_user().await.id;
    let conversation = app.conversation(&user, Channel::Whatsapp).await.id;
    let message = app
        .inbound(&conversation, "what's the weather?", &wamid())
        .await
        .message
        .unwrap()
        .id;
    (conversation, message)
}

#[tokio::test]
async fn a_tool_execution_is_recorded_and_listed_with_its_conversation() {
    let mut app = spawn_app().await;
    let (conversation, message) = conversation_with_message(&mut app).await;
    let (other_conversation, _) = conversation_with_message(&mut app).await;
    let recorded = record_tool(
        &mut app,
        ToolExecution {
            message_id: message.clone(),
            input: data(json!({"city": "Bogotá"})),
            output: data(json!({"celsius": 14.5})),
            status: ExecutionStatus::Error as i32,
            latency_ms: 830,
            tokens: 120,
            error: "upstream 503".into(),
            ..tool(&conversation, "weather")
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(recorded.conversation_id, conversation);
    assert_eq!(recorded.message_id, message);
    assert_eq!(recorded.tool_name, "weather");
    assert_eq!(recorded.input, data(json!({"city": "Bogotá"})));
    assert_eq!(recorded.output, data(json!({"celsius": 14.5})));
    assert_eq!(recorded.status(), ExecutionStatus::Error);
    assert_eq!((recorded.latency_ms, recorded.tokens), (830, 120));
    assert_eq!(recorded.error, "upstream 503");
    assert!(recorded.create_time.is_some());
    record_tool(&mut app, tool(&other_conversation, "search"), "")
        .await
        .unwrap();

    let listed = list_tools(&mut app, &conversation, 0, "").await.unwrap();
    assert_eq!(listed.executions, [recorded]);
    assert_eq!(listed.next_page_token, "");
}

#[tokio::test]
async fn executions_page_through_a_conversation_oldest_first() {
    let mut app = spawn_app().await;
    let (conversation, _) = conversation_with_message(&mut app).await;
    let mut tools = Vec::new();
    let mut agents = Vec::new();
    for i in 0..5 {
        tools.push(
            record_tool(&mut app, tool(&conversation, &format!("t{i}")), "")
                .await
                .unwrap()
                .id,
        );
        agents.push(
            record_agent(&mut app, agent(&conversation, &format!("a{i}")), "")
                .await
                .unwrap()
                .id,
        );
    }

    let (mut seen, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = list_tools(&mut app, &conversation, 2, &token)
            .await
            .unwrap();
        sizes.push(page.executions.len());
        seen.extend(page.executions.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(sizes.len() < 10, "pagination does not end");
    }
    assert_eq!((seen, sizes), (tools, vec![2, 2, 1]));

    let (mut seen, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = list_agents(&mut app, &conversation, 3, &token)
            .await
            .unwrap();
        sizes.push(page.executions.len());
        seen.extend(page.executions.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(sizes.len() < 10, "pagination does not end");
    }
    assert_eq!((seen, sizes), (agents, vec![3, 2]));
}

#[tokio::test]
async fn lists_of_an_unknown_conversation_are_not_found_and_of_a_quiet_one_empty() {
    let mut app = spawn_app().await;
    let (conversation, _) = conversation_with_message(&mut app).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = list_tools(&mut app, &unknown, 0, "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = list_agents(&mut app, &unknown, 0, "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        list_tools(&mut app, &conversation, 0, "")
            .await
            .unwrap()
            .executions
            .is_empty()
    );
    assert!(
        list_agents(&mut app, &conversation, 0, "")
            .await
            .unwrap()
            .executions
            .is_empty()
    );

    let status = list_tools(&mut app, "nope", -1, "bad").await.unwrap_err();
    assert_eq!(
        bad_fields(&status),
        ["conversation_id", "page_size", "page_token"]
    );
    let status = list_agents(&mut app, "", 0, "").await.unwrap_err();
    assert_eq!(bad_fields(&status), ["conversation_id"]);
}

#[tokio::test]
async fn record_tool_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let (conversation, _) = conversation_with_message(&mut app).await;
    let good = tool(&conversation, "weather");
    let long_request_id = "r".repeat(129);
    let cases: Vec<(ToolExecution, &str, &[&str])> = vec![
        (tool("", "weather"), "", &["execution.conversation_id"]),
        (tool("nope", "weather"), "", &["execution.conversation_id"]),
        (
            ToolExecution {
                message_id: "nope".into(),
                ..good.clone()
            },
            "",
            &["execution.message_id"],
        ),
        (tool(&conversation, ""), "", &["execution.tool_name"]),
        (
            tool(&conversation, &"t".repeat(201)),
            "",
            &["execution.tool_name"],
        ),
        (
            ToolExecution {
                status: 0,
                ..good.clone()
            },
            "",
            &["execution.status"],
        ),
        (
            ToolExecution {
                status: 17,
                ..good.clone()
            },
            "",
            &["execution.status"],
        ),
        (
            ToolExecution {
                latency_ms: -1,
                ..good.clone()
            },
            "",
            &["execution.latency_ms"],
        ),
        (
            ToolExecution {
                tokens: -1,
                ..good.clone()
            },
            "",
            &["execution.tokens"],
        ),
        (
            ToolExecution {
                error: "e".repeat(10_001),
                ..good.clone()
            },
            "",
            &["execution.error"],
        ),
        (good.clone(), &long_request_id, &["request_id"]),
        (
            ToolExecution {
                latency_ms: -1,
                tokens: -1,
                status: 0,
                ..tool("nope", "")
            },
            "",
            &[
                "execution.conversation_id",
                "execution.tool_name",
                "execution.status",
                "execution.latency_ms",
                "execution.tokens",
            ],
        ),
    ];
    for (bad, request_id, fields) in cases {
        let status = record_tool(&mut app, bad.clone(), request_id)
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), fields, "{bad:?}");
    }
    let status = app
        .client
        .record_tool_execution(RecordToolExecutionRequest {
            execution: None,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["execution"]);
    // At the limits.
    record_tool(
        &mut app,
        ToolExecution {
            error: "e".repeat(10_000),
            ..tool(&conversation, &"t".repeat(200))
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(app.count("tool_executions").await, 1);
}

#[tokio::test]
async fn record_agent_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let (conversation, _) = conversation_with_message(&mut app).await;
    let good = agent(&conversation, "companion");
    let cases: Vec<(AgentExecution, &[&str])> = vec![
        (agent("nope", "companion"), &["execution.conversation_id"]),
        (
            AgentExecution {
                message_id: "nope".into(),
                ..good.clone()
            },
            &["execution.message_id"],
        ),
        (agent(&conversation, ""), &["execution.agent_name"]),
        (
            agent(&conversation, &"a".repeat(201)),
            &["execution.agent_name"],
        ),
        (
            AgentExecution {
                model: "m".repeat(201),
                ..good.clone()
            },
            &["execution.model"],
        ),
        (
            AgentExecution {
                status: 0,
                ..good.clone()
            },
            &["execution.status"],
        ),
        (
            AgentExecution {
                latency_ms: -1,
                ..good.clone()
            },
            &["execution.latency_ms"],
        ),
        (
            AgentExecution {
                input_tokens: -1,
                ..good.clone()
            },
            &["execution.input_tokens"],
        ),
        (
            AgentExecution {
                output_tokens: -1,
                ..good.clone()
            },
            &["execution.output_tokens"],
        ),
        (
            AgentExecution {
                error: "e".repeat(10_001),
                ..good.clone()
            },
            &["execution.error"],
        ),
        (
            AgentExecution {
                input_tokens: -1,
                output_tokens: -1,
                ..agent("", "")
            },
            &[
                "execution.conversation_id",
                "execution.agent_name",
                "execution.input_tokens",
                "execution.output_tokens",
            ],
        ),
    ];
    for (bad, fields) in cases {
        let status = record_agent(&mut app, bad.clone(), "").await.unwrap_err();
        assert_eq!(bad_fields(&status), fields, "{bad:?}");
    }
    assert_eq!(app.count("agent_executions").await, 0);
}

#[tokio::test]
async fn an_agent_execution_is_recorded_with_its_usage() {
    let mut app = spawn_app().await;
    let (conversation, message) = conversation_with_message(&mut app).await;
    let recorded = record_agent(
        &mut app,
        AgentExecution {
            message_id: message.clone(),
            model: "gpt-4o-mini".into(),
            status: ExecutionStatus::Timeout as i32,
            latency_ms: 30_000,
            input_tokens: 1200,
            output_tokens: 0,
            error: "deadline exceeded".into(),
            metadata: data(json!({"attempt": 2.0})),
            ..agent(&conversation, "companion")
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(recorded.message_id, message);
    assert_eq!(recorded.agent_name, "companion");
    assert_eq!(recorded.model, "gpt-4o-mini");
    assert_eq!(recorded.status(), ExecutionStatus::Timeout);
    assert_eq!(
        (
            recorded.latency_ms,
            recorded.input_tokens,
            recorded.output_tokens
        ),
        (30_000, 1200, 0)
    );
    assert_eq!(recorded.error, "deadline exceeded");
    assert_eq!(recorded.metadata, data(json!({"attempt": 2.0})));
    let listed = list_agents(&mut app, &conversation, 0, "").await.unwrap();
    assert_eq!(listed.executions, [recorded]);
}

#[tokio::test]
async fn an_execution_needs_an_existing_conversation_and_a_message_of_it() {
    let mut app = spawn_app().await;
    let (conversation, message) = conversation_with_message(&mut app).await;
    let (other_conversation, other_message) = conversation_with_message(&mut app).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let status = record_tool(&mut app, tool(&unknown, "weather"), "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = record_agent(&mut app, agent(&unknown, "companion"), "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = record_tool(
        &mut app,
        ToolExecution {
            message_id: unknown.clone(),
            ..tool(&conversation, "weather")
        },
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = record_agent(
        &mut app,
        AgentExecution {
            message_id: unknown,
            ..agent(&conversation, "companion")
        },
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A message of another conversation.
    let status = record_tool(
        &mut app,
        ToolExecution {
            message_id: other_message,
            ..tool(&conversation, "weather")
        },
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["execution.message_id"]);
    let status = record_agent(
        &mut app,
        AgentExecution {
            message_id: message,
            ..agent(&other_conversation, "companion")
        },
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["execution.message_id"]);
    assert_eq!(app.count("tool_executions").await, 0);
    assert_eq!(app.count("agent_executions").await, 0);
}

#[tokio::test]
async fn executions_retried_with_their_request_id_are_recorded_once() {
    let mut app = spawn_app().await;
    let (conversation, _) = conversation_with_message(&mut app).await;
    let first = record_tool(&mut app, tool(&conversation, "weather"), "run-1/tool-1")
        .await
        .unwrap();
    let again = record_tool(&mut app, tool(&conversation, "weather"), "run-1/tool-1")
        .await
        .unwrap();
    assert_eq!(again, first);
    let status = record_tool(&mut app, tool(&conversation, "search"), "run-1/tool-1")
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert_eq!(app.count("tool_executions").await, 1);

    // The same request_id on another RPC is another key.
    let run = record_agent(&mut app, agent(&conversation, "companion"), "run-1/tool-1")
        .await
        .unwrap();
    let run_again = record_agent(&mut app, agent(&conversation, "companion"), "run-1/tool-1")
        .await
        .unwrap();
    assert_eq!(run_again, run);
    assert_eq!(app.count("agent_executions").await, 1);
}

/// A Struct holding U+0000 deep inside: jsonb refuses it.
fn with_nul() -> serde_json::Value {
    json!({"args": {"city": ["Bogotá", "a\u{0}b"]}})
}

#[tokio::test]
async fn record_tool_refuses_input_or_output_with_nul_or_over_64_kib() {
    let mut app = spawn_app().await;
    let (conversation, _) = conversation_with_message(&mut app).await;
    let good = tool(&conversation, "weather");
    let with = |input: serde_json::Value, output: serde_json::Value| ToolExecution {
        input: data(input),
        output: data(output),
        ..good.clone()
    };
    let cases: Vec<(ToolExecution, &[&str])> = vec![
        (with(with_nul(), json!({})), &["execution.input"]),
        (with(too_big(), json!({})), &["execution.input"]),
        (with(json!({}), with_nul()), &["execution.output"]),
        (
            with(json!({"k\u{0}": 1.0}), too_big()),
            &["execution.input", "execution.output"],
        ),
        (
            ToolExecution {
                tool_name: String::new(),
                ..with(json!({}), too_big())
            },
            &["execution.tool_name", "execution.output"],
        ),
    ];
    for (bad, fields) in cases {
        let status = record_tool(&mut app, bad, "").await.unwrap_err();
        assert_eq!(bad_fields(&status), fields);
    }
    assert_eq!(app.count("tool_executions").await, 0);
}

#[tokio::test]
async fn record_agent_refuses_metadata_with_nul_or_over_64_kib() {
    let mut app = spawn_app().await;
    let (conversation, _) = conversation_with_message(&mut app).await;
    let good = agent(&conversation, "concierge");
    let cases: Vec<(AgentExecution, &[&str])> = vec![
        (
            AgentExecution {
                metadata: data(with_nul()),
                ..good.clone()
            },
            &["execution.metadata"],
        ),
        (
            AgentExecution {
                metadata: data(too_big()),
                ..good.clone()
            },
            &["execution.metadata"],
        ),
        (
            AgentExecution {
                status: 0,
                metadata: data(with_nul()),
                ..good.clone()
            },
            &["execution.status", "execution.metadata"],
        ),
    ];
    for (bad, fields) in cases {
        let status = record_agent(&mut app, bad, "").await.unwrap_err();
        assert_eq!(bad_fields(&status), fields);
    }
    assert_eq!(app.count("agent_executions").await, 0);
}
