"""Avro topics end to end: bytes written by confluent-kafka's real AvroSerializer (what Kafka
Connect's AvroConverter writes for Debezium), on a real broker (Tansu), with schemas in a stand-in
Schema Registry (tests/schema_registry_stub.py), read by the real `cdc-cache serve` and asked
over gRPC exactly as a JSON topic would be."""

import datetime
import decimal
import json
import os
import time
import uuid

import grpc
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient, header_schema_id_serializer
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schema_registry_stub import SchemaRegistryStub
from sidecar_process import free_port, generate_stubs, log_tail, metric, sidecar, tansu, wait_ready

KEY_V1 = {
    "type": "record",
    "name": "Key",
    "namespace": "dbserver1.inventory.customers",
    "fields": [{"name": "id", "type": "int"}],
    "connect.name": "dbserver1.inventory.customers.Key",
}
# A key schema change that keeps the key's columns: new schema text, new id, same stored key.
KEY_V2 = dict(KEY_V1, doc="primary key of inventory.customers")


def value_record(extra_fields=()):
    """Debezium's row schema for inventory.customers, with Connect's semantic types."""
    return {
        "type": "record",
        "name": "Value",
        "fields": [
            {"name": "id", "type": "int"},
            {"name": "first_name", "type": "string"},
            {"name": "email", "type": ["null", "string"], "default": None},
            {
                "name": "balance",
                "type": {
                    "type": "bytes",
                    "scale": 2,
                    "precision": 10,
                    "connect.version": 1,
                    "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                    "logicalType": "decimal",
                },
            },
            {"name": "birth_date", "type": ["null", {"type": "int", "connect.version": 1, "connect.name": "io.debezium.time.Date"}], "default": None},
            {"name": "updated_at", "type": {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroTimestamp"}},
            {"name": "external_id", "type": {"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Uuid"}},
            *extra_fields,
        ],
        "connect.name": "dbserver1.inventory.customers.Value",
    }


def envelope(extra_fields=()):
    """Debezium's documented change-event envelope (AvroConverter)."""
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": "dbserver1.inventory.customers",
        "fields": [
            {"name": "before", "type": ["null", value_record(extra_fields)], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {
                "name": "source",
                "type": {
                    "type": "record",
                    "name": "Source",
                    "namespace": "io.debezium.connector.postgresql",
                    "fields": [
                        {"name": "version", "type": "string"},
                        {"name": "connector", "type": "string"},
                        {"name": "name", "type": "string"},
                        {"name": "ts_ms", "type": "long"},
                        {"name": "snapshot", "type": [{"type": "string", "connect.version": 1, "connect.parameters": {"allowed": "true,last,false,incremental"}, "connect.default": "false", "connect.name": "io.debezium.data.Enum"}, "null"], "default": "false"},
                        {"name": "db", "type": "string"},
                        {"name": "schema", "type": "string"},
                        {"name": "table", "type": "string"},
                        {"name": "lsn", "type": ["null", "long"], "default": None},
                    ],
                    "connect.name": "io.debezium.connector.postgresql.Source",
                },
            },
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
            {
                "name": "transaction",
                "type": ["null", {"type": "record", "name": "block", "namespace": "event", "fields": [
                    {"name": "id", "type": "string"},
                    {"name": "total_order", "type": "long"},
                    {"name": "data_collection_order", "type": "long"},
                ]}],
                "default": None,
            },
        ],
        "connect.name": "dbserver1.inventory.customers.Envelope",
    }


SOURCE = {
    "version": "2.7.3.Final",
    "connector": "postgresql",
    "name": "dbserver1",
    "ts_ms": 1_795_000_000_000,
    "snapshot": "false",
    "db": "inventory",
    "schema": "public",
    "table": "customers",
    "lsn": 24023128,
}


def customer(i, **changes):
    row = {
        "id": i,
        "first_name": f"name-{i}",
        "email": f"c{i}@example.com",
        "balance": decimal.Decimal(f"{i}234.50"),
        "birth_date": 19000 + i,
        "updated_at": 1_795_000_000_000_000 + i,
        "external_id": str(uuid.UUID(int=i)),
    }
    row.update(changes)
    return row


def customer_json(i, **changes):
    """The row as the sidecar stores it: compact JSON, schema order, decimals as exact strings."""
    row = customer(i, **changes)
    row["balance"] = str(row["balance"])
    return json.dumps(row, separators=(",", ":"))


def event(op, before=None, after=None):
    return {"before": before, "after": after, "source": SOURCE, "op": op, "ts_ms": 1_795_000_000_001, "transaction": None}


class Topic:
    """Writes Avro records to one topic with confluent-kafka's serializers."""

    def __init__(self, brokers, registry, name, key_schema, value_schema, id_serializer=None):
        self.name = name
        client = SchemaRegistryClient(registry if isinstance(registry, dict) else {"url": registry})
        conf = {"auto.register.schemas": True}
        if id_serializer is not None:
            conf["schema.id.serializer"] = id_serializer
        self.key = AvroSerializer(client, json.dumps(key_schema), conf=dict(conf))
        self.value = AvroSerializer(client, json.dumps(value_schema), conf=dict(conf))
        self.producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})

    def serialize(self, key, value):
        """(key bytes, value bytes, headers), as the serializers write them."""
        headers = []
        key_bytes = None if key is None else self.key(key, SerializationContext(self.name, MessageField.KEY, headers))
        value_bytes = None if value is None else self.value(value, SerializationContext(self.name, MessageField.VALUE, headers))
        return key_bytes, value_bytes, headers

    def send(self, key, value, partition=0):
        key_bytes, value_bytes, headers = self.serialize(key, value)
        self.producer.produce(self.name, key=key_bytes, value=value_bytes, partition=partition, headers=headers or None)

    def send_raw(self, key, value, partition=0, headers=None):
        self.producer.produce(self.name, key=key, value=value, partition=partition, headers=headers)

    def flush(self):
        assert self.producer.flush(30) == 0, "records not delivered"


def create_topics(brokers, *names, partitions=1):
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1, config={"cleanup.policy": "compact"}) for n in names]
    )
    for future in futures.values():
        future.result(30)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("avro")
    registry = SchemaRegistryStub(free_port()).start()
    (workdir / "stubs").mkdir()
    pb2, pb2_grpc = generate_stubs(workdir / "stubs")
    with tansu(workdir) as brokers:
        yield {"workdir": workdir, "brokers": brokers, "registry": registry, "pb2": pb2, "pb2_grpc": pb2_grpc}
    registry.stop()


def stub(env, grpc_addr):
    channel = grpc.insecure_channel(grpc_addr)
    return env["pb2"], env["pb2_grpc"].CacheStub(channel)


def get(env, grpc_addr, table, key):
    pb2, client = stub(env, grpc_addr)
    reply = client.Get(pb2.GetRequest(table=table, key=key.encode()), timeout=5)
    return reply.value.decode() if reply.found else None


def table_status(env, grpc_addr, table):
    pb2, client = stub(env, grpc_addr)
    status = client.Status(pb2.StatusRequest(), timeout=5)
    return next(t for t in status.tables if t.table == table)


def eventually(what, check, timeout=30):
    """Calls `check` until it returns something true; a gRPC error (the server not listening
    yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except grpc.RpcError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.2)


def serve_args(env, *topics, extra=()):
    args = ["--brokers", env["brokers"], "--schema-registry-url", env["registry"].url]
    for topic in topics:
        args += ["--topic", topic]
    return [*args, *extra]


def test_debezium_avro_topics_read_like_json_ones(env):
    brokers, registry = env["brokers"], env["registry"]
    create_topics(brokers, "dbz.customers", partitions=3)
    create_topics(brokers, "flat.customers", "trunc.customers")

    # Change events, wire format 0 (id prefix), over three partitions.
    topic = Topic(brokers, registry.url, "dbz.customers", KEY_V1, envelope())
    for i in range(1, 31):
        topic.send({"id": i}, event("r", after=customer(i)), partition=i % 3)
    topic.send({"id": 2}, event("u", before=customer(2), after=customer(2, email="new@example.com")), partition=2)
    topic.send({"id": 3}, event("d", before=customer(3)), partition=0)
    topic.send({"id": 3}, None, partition=0)  # the tombstone Debezium writes after a delete
    topic.send({"id": 4}, event("d", before=customer(4)), partition=1)
    topic.flush()

    # Schema evolution mid-topic: a column added (new value schema id), and the key schema
    # changed without changing the key's columns (new key schema id, same stored key).
    tier = {"name": "tier", "type": ["null", "string"], "default": None}
    evolved = Topic(brokers, registry.url, "dbz.customers", KEY_V2, envelope([tier]))
    evolved.send({"id": 5}, event("u", before=customer(5), after=customer(5, tier="gold")), partition=2)
    evolved.send({"id": 31}, event("c", after=customer(31, tier=None)), partition=1)
    evolved.flush()

    # Flattened rows (ExtractNewRecordState, rewrite mode) in wire format 1: schema GUIDs in
    # the __key_schema_id / __value_schema_id headers, Avro logical types in the row.
    flat_value = {
        "type": "record",
        "name": "Row",
        "fields": [
            {"name": "id", "type": "int"},
            {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "__deleted", "type": ["null", "string"], "default": None},
        ],
    }
    flat = Topic(brokers, registry.url, "flat.customers", KEY_V1, flat_value, id_serializer=header_schema_id_serializer)
    at = datetime.datetime(2026, 11, 24, 12, 30, 0, 123456, tzinfo=datetime.timezone.utc)
    for i in (1, 2):
        flat.send({"id": i}, {"id": i, "price": decimal.Decimal("-0.125"), "day": datetime.date(2026, 11, 24), "at": at, "ref": uuid.UUID(int=i), "__deleted": "false"})
    flat.send({"id": 2}, {"id": 2, "price": decimal.Decimal("0"), "day": datetime.date(2026, 11, 24), "at": at, "ref": uuid.UUID(int=2), "__deleted": "true"})
    flat.flush()

    # A truncate removes what its partition wrote; keys use a GUID prefix (format 1).
    guid_prefix = lambda payload, ctx, schema_id: schema_id.guid_to_bytes() + payload  # noqa: E731
    trunc = Topic(brokers, registry.url, "trunc.customers", KEY_V1, envelope(), id_serializer=guid_prefix)
    trunc.send({"id": 1}, event("c", after=customer(1)))
    trunc.send(None, event("t"))
    trunc.send({"id": 2}, event("c", after=customer(2)))
    trunc.flush()

    args = serve_args(env, "dbz.customers=customers:avro", "flat.customers=flat:avro", "trunc.customers=trunc:avro")
    with sidecar(env["workdir"], "serve", *args, log_name="serve-envelopes.log") as (_, grpc_addr, admin_addr):
        assert get(env, grpc_addr, "customers", '{"id":1}') == customer_json(1)
        assert get(env, grpc_addr, "customers", '{"id":2}') == customer_json(2, email="new@example.com")
        assert get(env, grpc_addr, "customers", '{"id":3}') is None
        assert get(env, grpc_addr, "customers", '{"id":4}') is None
        # The request key is the same JSON whatever the converter: spacing does not matter.
        assert get(env, grpc_addr, "customers", '{ "id": 30 }') == customer_json(30)
        assert get(env, grpc_addr, "customers", '{"id":5}') == customer_json(5, tier="gold")
        assert get(env, grpc_addr, "customers", '{"id":31}') == customer_json(31, tier=None)
        assert table_status(env, grpc_addr, "customers").entries == 29  # 31 rows, 2 deleted

        micros = int(at.timestamp()) * 1_000_000 + 123456
        assert get(env, grpc_addr, "flat", '{"id":1}') == (
            '{"id":1,"price":"-0.125","day":%d,"at":%d,"ref":"%s"}'
            % ((datetime.date(2026, 11, 24) - datetime.date(1970, 1, 1)).days, micros, uuid.UUID(int=1))
        )
        assert get(env, grpc_addr, "flat", '{"id":2}') is None

        assert get(env, grpc_addr, "trunc", '{"id":1}') is None
        assert get(env, grpc_addr, "trunc", '{"id":2}') == customer_json(2)

        assert metric(admin_addr, "cdc_cache_decode_errors_total", table="customers") == 0
        # Each schema was fetched once, however many records named it.
        assert all(registry.asked(f"/schemas/ids/{i}") <= 1 for i in range(1, 20))
        assert table_status(env, grpc_addr, "customers").format == "avro"


def test_registry_outage_waits_and_loses_nothing(env, tmp_path):
    brokers = env["brokers"]
    registry = SchemaRegistryStub(free_port(), auth=("svc", "p@ss:word")).start()
    create_topics(brokers, "outage.customers")
    credentials = {"url": registry.url, "basic.auth.user.info": "svc:p@ss:word"}
    topic = Topic(brokers, credentials, "outage.customers", KEY_V1, envelope())
    for i in range(1, 6):
        topic.send({"id": i}, event("r", after=customer(i)))
    topic.flush()
    # Written now, while the registry is up, and produced later, while it is down: a record
    # naming a schema the sidecar has not fetched yet (a column added).
    tier = {"name": "tier", "type": ["null", "string"], "default": None}
    evolved = Topic(brokers, credentials, "outage.customers", KEY_V1, envelope([tier]))
    later = evolved.serialize({"id": 6}, event("c", after=customer(6, tier="new")))
    registry.stop()

    args = [
        "--brokers", brokers,
        "--topic", "outage.customers=customers:avro",
        "--schema-registry-url", registry.url,
        "--schema-registry-user", "svc",
    ]

    os.environ["CDC_CACHE_SCHEMA_REGISTRY_PASSWORD"] = "p@ss:word"
    try:
        with sidecar(tmp_path, "serve", *args, ready=False) as (process, grpc_addr, admin_addr):
            # Down at start-up: not ready, and Status says why, naming the registry.
            problem = eventually(
                "Status names the unreachable registry",
                lambda: (table_status(env, grpc_addr, "customers").problem or None) if process.poll() is None else "exited",
            )
            assert "schema registry" in problem and registry.url in problem and "partition 0 offset 0" in problem, problem
            assert table_status(env, grpc_addr, "customers").ready is False
            log = (tmp_path / "cdc-cache.log").read_text()
            assert "p@ss:word" not in log

            registry.start()
            wait_ready(process, admin_addr, tmp_path / "cdc-cache.log")
            assert get(env, grpc_addr, "customers", '{"id":5}') == customer_json(5)
            assert table_status(env, grpc_addr, "customers").problem == ""

            # Gone again mid-stream while a record names a schema not yet fetched: the table
            # waits (nothing skipped), and catches up when the registry is back.
            registry.stop()
            topic.send_raw(later[0], later[1])
            topic.send({"id": 1}, event("u", before=customer(1), after=customer(1, first_name="cached")))
            topic.flush()
            eventually(
                "Status names the registry again",
                lambda: "schema registry" in table_status(env, grpc_addr, "customers").problem,
            )
            assert get(env, grpc_addr, "customers", '{"id":6}') is None
            registry.start()
            eventually("the waiting record to be applied", lambda: get(env, grpc_addr, "customers", '{"id":6}'))
            assert get(env, grpc_addr, "customers", '{"id":6}') == customer_json(6, tier="new")
            eventually(
                "the record after it to be applied",
                lambda: get(env, grpc_addr, "customers", '{"id":1}') == customer_json(1, first_name="cached"),
            )
            assert metric(admin_addr, "cdc_cache_decode_errors_total", table="customers") == 0
    finally:
        del os.environ["CDC_CACHE_SCHEMA_REGISTRY_PASSWORD"]
        registry.stop()


def test_malformed_frames_and_unknown_schemas_are_decode_errors(env, tmp_path):
    brokers, registry = env["brokers"], env["registry"]
    create_topics(brokers, "bad.customers")
    topic = Topic(brokers, registry.url, "bad.customers", KEY_V1, envelope())
    topic.send({"id": 1}, event("c", after=customer(1)))
    topic.flush()
    good_key, good_value, _ = topic.serialize({"id": 2}, event("c", after=customer(2)))
    registry.put(9001, 'syntax = "proto3"; message M { int32 id = 1; }', schema_type="PROTOBUF")
    topic.send_raw(good_key, b'{"id":2}')  # offset 1: JSON, not Confluent framing
    topic.send_raw(good_key, b"\x00\x00\x00")  # offset 2: frame cut short
    topic.send_raw(good_key, b"\x00\x00\x00\x10\x92" + b"\x02")  # offset 3: schema id 4242, unknown
    topic.send_raw(good_key, b"\x00\x00\x00\x23\x29\x02")  # offset 4: schema 9001 is Protobuf
    topic.send_raw(good_key, good_value[:5] + b"\x99")  # offset 5: the envelope's id, bad datum
    topic.send({"id": 3}, event("c", after=customer(3)))
    topic.flush()

    args = serve_args(env, "bad.customers=customers:avro")
    with sidecar(tmp_path, "serve", *args) as (_, grpc_addr, admin_addr):
        assert get(env, grpc_addr, "customers", '{"id":1}') == customer_json(1)
        assert get(env, grpc_addr, "customers", '{"id":3}') == customer_json(3)
        assert get(env, grpc_addr, "customers", '{"id":2}') is None
        assert metric(admin_addr, "cdc_cache_decode_errors_total", table="customers") == 5
        # The unknown id was asked for a few times, then remembered.
        assert registry.asked("/schemas/ids/4242") == 5
    log = (tmp_path / "cdc-cache.log").read_text()
    assert "schema registry has no such schema yet; asking again" in log and "schema=id 4242" in log, log

    # With --on-decode-error fail the sidecar stops at the first, naming where it is and why.
    with sidecar(tmp_path, "serve", *args, "--on-decode-error", "fail", ready=False, log_name="fail.log") as (process, _, _):
        assert process.wait(timeout=60) != 0
    message = (tmp_path / "fail.log").read_text()
    assert "partition 0 at offset 1" in message and "wire format" in message, message

    create_topics(brokers, "protobuf.customers")
    other = Topic(brokers, registry.url, "protobuf.customers", KEY_V1, envelope())
    other.send({"id": 1}, event("c", after=customer(1)))
    other.send_raw(good_key, b"\x00\x00\x00\x23\x29\x02")
    other.flush()
    args = serve_args(env, "protobuf.customers=customers:avro", extra=["--on-decode-error", "fail"])
    with sidecar(tmp_path, "serve", *args, ready=False, log_name="protobuf.log") as (process, _, _):
        assert process.wait(timeout=60) != 0
    message = (tmp_path / "protobuf.log").read_text()
    assert "offset 1" in message and "schema id 9001 cannot be used: it is a PROTOBUF schema" in message, message
