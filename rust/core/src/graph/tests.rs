//! Graph construction, validation and serde (docs/internals.md, "Task graphs").

use super::*;
use crate::policy::TimeoutPolicy;
use crate::types::IntType;

fn bytes() -> DataTypeDescriptor {
    DataTypeDescriptor::bytes()
}
fn i32t() -> DataTypeDescriptor {
    DataTypeDescriptor::int(IntType::Int32)
}
fn i64t() -> DataTypeDescriptor {
    DataTypeDescriptor::int(IntType::Int64)
}
fn src(task_idx: u32, position: u32) -> TaskOutputRef {
    TaskOutputRef { task_idx, position }
}

fn td(
    name: &str,
    inputs: Vec<DataTypeDescriptor>,
    outputs: Vec<DataTypeDescriptor>,
    sources: Option<Vec<TaskOutputRef>>,
) -> TaskDescriptor {
    TaskDescriptor {
        package: "pkg".into(),
        task_func: name.into(),
        policy: None,
        inputs,
        outputs,
        input_sources: sources,
    }
}

fn ten_task_graph() -> TaskGraph {
    let mut b = GraphBuilder::new();
    let tasks = [
        td("t0", vec![bytes(), i32t()], vec![bytes(), i64t()], None),
        td("t1", vec![bytes()], vec![bytes()], None),
        td(
            "t2",
            vec![bytes(), bytes()],
            vec![bytes()],
            Some(vec![src(0, 0), src(1, 0)]),
        ),
        td(
            "t3",
            vec![i64t(), bytes()],
            vec![i64t()],
            Some(vec![src(0, 1), src(0, 0)]),
        ),
        td(
            "t4",
            vec![bytes(), bytes()],
            vec![bytes(), bytes()],
            Some(vec![src(2, 0), src(2, 0)]),
        ),
        td("t5", vec![], vec![], None),
        td("t6", vec![bytes()], vec![i64t()], Some(vec![src(2, 0)])),
        td(
            "t7",
            vec![i64t(), i64t()],
            vec![],
            Some(vec![src(3, 0), src(6, 0)]),
        ),
        td("t8", vec![bytes()], vec![bytes()], Some(vec![src(4, 0)])),
        td("t9", vec![i32t()], vec![bytes()], None),
    ];
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(b.insert_task(t).expect("insert") as usize, i);
    }
    b.build()
}

#[test]
fn test_task_graph_construction() {
    let g = ten_task_graph();
    assert_eq!(g.num_tasks(), 10);
    assert_eq!(g.num_deps(), 14);
    // Input tasks: input deps first, then output deps.
    assert_eq!(g.task_inputs(0), &[0, 1]);
    assert_eq!(g.task_outputs(0), 2..4);
    assert_eq!(g.task_inputs(1), &[4]);
    assert_eq!(g.task_outputs(1), 5..6);
    assert_eq!(g.task_inputs(2), &[2, 5], "fan-in");
    assert_eq!(g.task_inputs(3), &[3, 2], "swapped input order");
    assert_eq!(g.task_inputs(4), &[6, 6], "same output used twice");
    assert_eq!(g.task_outputs(4), 8..10);
    assert!(
        g.task_inputs(5).is_empty() && g.task_outputs(5).is_empty(),
        "no I/O"
    );
    assert_eq!(g.task_inputs(6), &[6], "fan-out of t2");
    assert_eq!(g.task_inputs(7), &[7, 10]);
    assert_eq!(g.task_inputs(8), &[8]);
    assert_eq!(g.task_inputs(9), &[12]);
    assert_eq!(g.task_outputs(9), 13..14);

    let parents: Vec<&[u32]> = (0..10).map(|t| g.parents(t)).collect();
    assert_eq!(
        parents,
        vec![
            &[][..],
            &[],
            &[0, 1],
            &[0],
            &[2],
            &[],
            &[2],
            &[3, 6],
            &[4],
            &[]
        ]
    );
    let children: Vec<&[u32]> = (0..10).map(|t| g.children(t)).collect();
    assert_eq!(
        children,
        vec![
            &[2, 3][..],
            &[2],
            &[4, 6],
            &[7],
            &[8],
            &[],
            &[7],
            &[],
            &[],
            &[]
        ]
    );
    for t in [0, 1, 5, 9] {
        assert!(g.is_input_task(t));
    }
    assert!(!g.is_input_task(2));

    assert_eq!(g.dep_source(0), None);
    assert_eq!(g.dep_source(2), Some(src(0, 0)));
    assert_eq!(g.dep_source(9), Some(src(4, 1)));
    assert_eq!(g.dep_destinations(2), vec![src(2, 0), src(3, 1)]);
    assert_eq!(g.dep_destinations(6), vec![src(4, 0), src(4, 1), src(6, 0)]);
    assert_eq!(g.dep_type(1), Some(&i32t()));
    assert_eq!(g.dangling_outputs(), vec![9, 11, 13]);
    assert_eq!(g.graph_inputs(), &[0, 1, 4, 12]);
    assert_eq!(
        g.graph_outputs(),
        &[11, 13],
        "outputs of childless tasks only"
    );
    assert_eq!(g.contexts().len(), 10);

    // JSON round trip keeps every structural detail.
    let again = TaskGraph::from_json(g.to_json().as_bytes()).expect("round trip");
    assert_eq!(again, g);
}

fn rejected(b: &mut GraphBuilder, t: &TaskDescriptor) -> CoreError {
    let before = b.clone();
    let e = b.insert_task(t).expect_err("rejected");
    assert_eq!(*b, before, "a failed insert leaves the graph unchanged");
    e
}

fn base() -> GraphBuilder {
    let mut b = GraphBuilder::new();
    b.insert_task(&td("a", vec![bytes()], vec![bytes(), i32t()], None))
        .expect("a");
    b
}

#[test]
fn test_insert_task_mismatched_input_source_count() {
    let mut b = base();
    let e = rejected(
        &mut b,
        &td("f", vec![bytes(), bytes()], vec![], Some(vec![src(0, 0)])),
    );
    assert_eq!(e.kind(), "InvalidTaskInputs");
    assert!(e.to_string().contains("task 1 (pkg.f)"), "{e}");
}

#[test]
fn test_invalid_task_input_source_for_zero_input() {
    let mut b = base();
    let e = rejected(&mut b, &td("f", vec![], vec![], Some(vec![])));
    assert_eq!(e.kind(), "InvalidTaskInputs");
    let e = rejected(&mut b, &td("f", vec![], vec![], Some(vec![src(0, 0)])));
    assert_eq!(e.kind(), "InvalidTaskInputs");
}

#[test]
fn test_insert_task_type_mismatch() {
    let mut b = base();
    let e = rejected(
        &mut b,
        &td(
            "f",
            vec![bytes(), bytes()],
            vec![],
            Some(vec![src(0, 0), src(0, 1)]),
        ),
    );
    assert!(
        e.to_string().starts_with("task 1 (pkg.f): input 1: type"),
        "{e}"
    );
    let shared = DataTypeDescriptor::SharedValue(crate::types::ValueType::Bytes {});
    let e = rejected(
        &mut b,
        &td("f", vec![shared], vec![], Some(vec![src(0, 0)])),
    );
    assert_eq!(e.kind(), "InvalidTaskInputs", "Value vs SharedValue differ");
}

#[test]
fn test_insert_task_invalid_task_index() {
    let mut b = base();
    b.insert_task(&td("b", vec![], vec![], None)).expect("b");
    b.insert_task(&td("c", vec![], vec![], None)).expect("c");
    b.insert_task(&td("fn", vec![bytes()], vec![], Some(vec![src(0, 0)])))
        .expect("d");
    let e = rejected(
        &mut b,
        &td(
            "fn",
            vec![bytes(), bytes()],
            vec![],
            Some(vec![src(0, 0), src(7, 0)]),
        ),
    );
    assert_eq!(
        e.to_string(),
        "task 4 (pkg.fn): input 1: source task 7 does not exist yet"
    );
    let e = rejected(
        &mut b,
        &td("fn", vec![bytes()], vec![], Some(vec![src(4, 0)])),
    );
    assert!(
        e.to_string().contains("source task 4 does not exist yet"),
        "self reference: {e}"
    );
}

#[test]
fn test_insert_task_invalid_output_position() {
    let mut b = base();
    let e = rejected(
        &mut b,
        &td("f", vec![bytes()], vec![], Some(vec![src(0, 2)])),
    );
    assert_eq!(
        e.to_string(),
        "task 1 (pkg.f): input 0: source task 0 has no output 2 (it has 2)"
    );
}

fn policy(instances: u32, soft: u64, hard: u64) -> ExecutionPolicy {
    ExecutionPolicy {
        max_num_retry: 0,
        max_num_instances: instances,
        timeout_policy: TimeoutPolicy {
            soft_timeout_ms: soft,
            hard_timeout_ms: hard,
        },
    }
}

#[test]
fn test_new_invalid_termination_task_execution_policy() {
    let mut b = base();
    let e = b
        .set_commit("pkg", "c", Some(policy(0, 1000, 2000)))
        .expect_err("instances");
    assert_eq!(e.kind(), "InvalidExecutionPolicy");
    assert!(e.to_string().starts_with("commit task"), "{e}");
    assert!(b
        .set_cleanup("pkg", "c", Some(policy(0, 1000, 2000)))
        .is_err());
    assert!(b.partial().commit().is_none() && b.partial().cleanup().is_none());
}

#[test]
fn test_new_invalid_termination_task_timeout_policy() {
    let mut b = base();
    for p in [
        policy(1, 99, 2000),
        policy(1, 1000, 1000),
        policy(1, 1000, 86_400_001),
    ] {
        assert_eq!(
            b.set_commit("pkg", "c", Some(p))
                .expect_err("timeout")
                .kind(),
            "InvalidExecutionPolicy"
        );
        assert_eq!(
            b.set_cleanup("pkg", "c", Some(p))
                .expect_err("timeout")
                .kind(),
            "InvalidExecutionPolicy"
        );
    }
}

#[test]
fn test_insert_task_invalid_execution_policy() {
    let mut b = base();
    let mut t = td("f", vec![bytes()], vec![], Some(vec![src(0, 0)]));
    t.policy = Some(policy(0, 1000, 2000));
    assert_eq!(rejected(&mut b, &t).kind(), "InvalidExecutionPolicy");
}

#[test]
fn test_insert_task_invalid_timeout_policy() {
    let mut b = base();
    for p in [
        policy(1, 50, 2000),
        policy(1, 3000, 2000),
        policy(1, 1000, u64::MAX),
    ] {
        let mut t = td("f", vec![bytes()], vec![], Some(vec![src(0, 0)]));
        t.policy = Some(p);
        assert_eq!(rejected(&mut b, &t).kind(), "InvalidExecutionPolicy");
    }
}

#[test]
fn test_insert_task_invalid_names() {
    let mut b = base();
    let mut t = td("f", vec![], vec![], None);
    t.package = "../etc".into();
    assert_eq!(rejected(&mut b, &t).kind(), "InvalidTaskName");
    t.package = "pkg".into();
    t.task_func = "os.system; rm".into();
    assert_eq!(rejected(&mut b, &t).kind(), "InvalidTaskName");
    assert!(b.set_commit("a/b", "c", None).is_err());
}

const EXAMPLE: &str = include_str!("../../tests/data/task-graph-example.json");

#[test]
fn test_serde_example() {
    let g = TaskGraph::from_json(EXAMPLE.as_bytes()).expect("example parses");
    assert_eq!(g.num_tasks(), 3);
    assert_eq!(g.graph_inputs().len(), 2);
    assert_eq!(g.graph_outputs().len(), 2);
    assert_eq!(g.policy(1).max_num_instances, 2);
    assert!(g.policy(0).is_default());
    assert_eq!(g.commit().expect("commit").policy.max_num_retry, 2);
    assert!(g.cleanup().expect("cleanup").policy.is_default());
    let json = g.to_json();
    assert_eq!(TaskGraph::from_json(json.as_bytes()).expect("json"), g);
    let z = g.to_compressed().expect("zstd");
    assert_eq!(
        TaskGraph::from_compressed(&z, 1 << 20).expect("zstd-json"),
        g
    );
    // Default policies are not serialized; non-default ones are.
    let v: serde_json::Value = serde_json::from_str(&json).expect("value");
    assert!(v["tasks"][0].get("execution_policy").is_none());
    assert!(v["tasks"][1].get("execution_policy").is_some());
    assert!(v["cleanup_task"].get("execution_policy").is_none());
    assert_eq!(v["schema_version"], "0.1.0");
    assert!(v["tasks"][0]["input_sources"].is_null());
}

fn with_version(v: &str) -> String {
    EXAMPLE.replace("\"0.1.0\"", v)
}

#[test]
fn test_invalid_schema_version() {
    for v in ["\"abc\"", "\"0.1\"", "\"\""] {
        let e = TaskGraph::from_json(with_version(v).as_bytes()).expect_err(v);
        assert_eq!(e.kind(), "InvalidSchemaVersion", "{v}");
    }
    let e = TaskGraph::from_json(with_version("1").as_bytes()).expect_err("number");
    assert_eq!(e.kind(), "MalformedGraph");
}

#[test]
fn test_incompatible_schema_version() {
    for v in ["\"0.2.0\"", "\"1.0.0\"", "\"0.0.9\"", "\"0.1.0-alpha\""] {
        let e = TaskGraph::from_json(with_version(v).as_bytes()).expect_err(v);
        assert_eq!(e.kind(), "IncompatibleSchemaVersion", "{v}");
    }
    for v in ["\"0.1.0\"", "\"0.1.7\"", "\"0.1.3+build\""] {
        TaskGraph::from_json(with_version(v).as_bytes()).expect(v);
    }
}

#[test]
fn test_schema_version_check_priority() {
    // Tasks are garbage, but the version is checked first.
    let doc = r#"{"schema_version":"9.0.0","tasks":[{"bogus":1}],"commit_task":{"x":1},"cleanup_task":null}"#;
    assert_eq!(
        TaskGraph::from_json(doc.as_bytes()).expect_err("v").kind(),
        "IncompatibleSchemaVersion"
    );
}

#[test]
fn test_invalid_task_descriptor() {
    // Removing task 0 breaks the later references (task 1 now names itself).
    let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).expect("json");
    v["tasks"].as_array_mut().expect("tasks").remove(0);
    let e = TaskGraph::from_json(v.to_string().as_bytes()).expect_err("broken");
    assert_eq!(e.kind(), "InvalidTaskInputs");
    assert_eq!(
        e.to_string(),
        "task 0 (wordcount.count): input 0: source task 0 does not exist yet"
    );
}

#[test]
fn test_missing_fields() {
    let v: serde_json::Value = serde_json::from_str(EXAMPLE).expect("json");
    for key in ["schema_version", "tasks", "commit_task", "cleanup_task"] {
        let mut w = v.clone();
        w.as_object_mut().expect("obj").remove(key);
        let e = TaskGraph::from_json(w.to_string().as_bytes()).expect_err(key);
        assert_eq!(e.kind(), "MalformedGraph", "{key}");
        assert!(e.to_string().contains(key), "{e}");
    }
    for key in ["tdl_context", "inputs", "outputs"] {
        let mut w = v.clone();
        w["tasks"][1].as_object_mut().expect("obj").remove(key);
        let e = TaskGraph::from_json(w.to_string().as_bytes()).expect_err(key);
        assert!(e.to_string().contains("task 1"), "{e}");
    }
    // input_sources and execution_policy may be omitted.
    let mut w = v.clone();
    w["tasks"][0]
        .as_object_mut()
        .expect("obj")
        .remove("input_sources");
    w["tasks"][1]
        .as_object_mut()
        .expect("obj")
        .remove("execution_policy");
    TaskGraph::from_json(w.to_string().as_bytes()).expect("optional fields");
    // A policy object needs both counts.
    let mut w = v.clone();
    w["tasks"][1]["execution_policy"]
        .as_object_mut()
        .expect("obj")
        .remove("max_num_retry");
    assert!(TaskGraph::from_json(w.to_string().as_bytes()).is_err());
}

#[test]
fn test_duplicate_and_unknown_fields() {
    let dup = EXAMPLE.replacen(
        "\"cleanup_task\"",
        "\"commit_task\": null, \"cleanup_task\"",
        1,
    );
    let e = TaskGraph::from_json(dup.as_bytes()).expect_err("dup");
    assert!(e.to_string().contains("duplicate"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).expect("json");
    v["extra"] = serde_json::Value::Bool(true);
    let e = TaskGraph::from_json(v.to_string().as_bytes()).expect_err("unknown");
    assert!(e.to_string().contains("unknown field"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).expect("json");
    v["tasks"][0]["priority"] = serde_json::Value::Bool(true);
    assert!(TaskGraph::from_json(v.to_string().as_bytes()).is_err());
}

#[test]
fn test_malformed_inputs() {
    for bad in [&b""[..], b"{", b"[]", b"null", b"\xff\xfe"] {
        assert_eq!(
            TaskGraph::from_json(bad).expect_err("bad").kind(),
            "MalformedGraph"
        );
    }
    assert_eq!(
        TaskGraph::from_compressed(b"nope", 1024)
            .expect_err("zstd")
            .kind(),
        "MalformedGraph"
    );
    let z = crate::codec::compress(EXAMPLE.as_bytes()).expect("z");
    assert!(
        TaskGraph::from_compressed(&z, 64).is_err(),
        "bounded decompression"
    );
}

#[test]
fn test_names_validated_when_parsing() {
    let bad = EXAMPLE.replace("\"read_shard\"", "\"../../etc/passwd\"");
    let e = TaskGraph::from_json(bad.as_bytes()).expect_err("name");
    assert_eq!(e.kind(), "InvalidTaskName");
    assert!(e.to_string().starts_with("task 0:"), "{e}");
    let bad = EXAMPLE.replace("\"publish\"", "\"a..b\"");
    assert_eq!(
        TaskGraph::from_json(bad.as_bytes())
            .expect_err("name")
            .kind(),
        "InvalidTaskName"
    );
}

#[test]
fn test_string_type_extension_in_graphs() {
    let doc = r#"{"schema_version":"0.1.0","tasks":[
      {"tdl_context":{"package":"p","task_func":"f"},"inputs":[{"Value":{"String":{}}}],"outputs":[{"Value":{"Map":{"key":{"String":{}},"value":{"String":{}}}}}],"input_sources":null}],
      "commit_task":null,"cleanup_task":null}"#;
    let g = TaskGraph::from_json(doc.as_bytes()).expect("string types");
    assert_eq!(g.dep_type(0), Some(&DataTypeDescriptor::string()));
}

#[test]
fn interning_keeps_graph_small() {
    let mut b = GraphBuilder::new();
    for _ in 0..1000 {
        b.insert_task(&td("same", vec![bytes()], vec![bytes()], None))
            .expect("task");
    }
    let g = b.build();
    assert_eq!(g.contexts().len(), 1);
    assert!(
        g.heap_size() / 1000 < 100,
        "{} bytes per task",
        g.heap_size() / 1000
    );
}
