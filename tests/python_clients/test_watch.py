"""Watch from Python (grpcio) against a real sidecar (`cdc-cache demo`, whose embedded Kafka mock
changes a row every few milliseconds): a stream broken off and resumed from its last position
again and again sees exactly what an unbroken stream sees, and a watcher that stops reading is
dropped with RESOURCE_EXHAUSTED and the position to resume from in the trailer, then resumes
without a gap.

For a watcher of every key, positions number the table's changes one by one (the part after the
dash), so "no gap, no repeat" is also checked as consecutive numbers.
"""

import threading
import time

import grpc
import pytest
from sidecar_process import demo, generate_stubs, metric

RESUME_TRAILER = "cdc-cache-resume-from"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    return generate_stubs(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    # Fast changes; a history small enough that a watcher that stops reading is dropped soon.
    args = ["--update-interval", "5ms", "--watch-history-bytes", "1Mi"]
    with demo(tmp_path_factory.mktemp("sidecar"), *args) as addresses:
        yield addresses


def seq(position):
    return int(position.rsplit("-", 1)[1])


def change(event):
    return (event.type, event.key, event.value, event.partition, event.offset, event.position)


def test_a_stream_resumed_again_and_again_sees_what_an_unbroken_one_sees(sidecar, stubs):
    pb2, pb2_grpc = stubs
    grpc_addr, _ = sidecar
    with grpc.insecure_channel(grpc_addr) as channel:
        stub = pb2_grpc.CacheStub(channel)
        unbroken = stub.Watch(pb2.WatchRequest(), timeout=60)
        synced = next(unbroken)
        assert synced.type == pb2.ChangeEvent.SYNCED
        start = synced.position

        expected = []

        def read_unbroken():
            for event in unbroken:
                expected.append(change(event))
                if len(expected) >= 600:
                    return

        reader = threading.Thread(target=read_unbroken, daemon=True)
        reader.start()

        pieced, position, reconnects = [], start, 0
        while len(pieced) < 600:
            call = stub.Watch(pb2.WatchRequest(resume_from=position), timeout=60)
            resumed = next(call)
            assert (resumed.type, resumed.position) == (pb2.ChangeEvent.SYNCED, position)
            for event in call:
                pieced.append(change(event))
                position = event.position
                if len(pieced) % 45 == 0 or len(pieced) >= 600:
                    break
            call.cancel()
            reconnects += 1
        reader.join(timeout=60)
        unbroken.cancel()

    assert reconnects >= 10
    assert pieced[:600] == expected[:600]
    numbers = [seq(e[5]) for e in pieced]
    assert numbers == list(range(seq(start) + 1, seq(start) + 1 + len(numbers)))
    assert {e[0] for e in pieced} <= {pb2.ChangeEvent.UPSERT, pb2.ChangeEvent.DELETE}


def test_a_watcher_that_stops_reading_is_dropped_with_its_position_and_resumes(sidecar, stubs):
    pb2, pb2_grpc = stubs
    grpc_addr, admin_addr = sidecar
    def dropped():
        return metric(admin_addr, "cdc_cache_watchers_dropped_total", table="customers", reason="slow")

    before = dropped()
    # No bandwidth probing: the receive window stays small, so not reading stalls the server.
    with grpc.insecure_channel(grpc_addr, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stub = pb2_grpc.CacheStub(channel)
        call = stub.Watch(pb2.WatchRequest(), timeout=120)
        assert next(call).type == pb2.ChangeEvent.SYNCED
        deadline = time.monotonic() + 60
        while dropped() == before:
            assert time.monotonic() < deadline, "the watcher that stopped reading was not dropped"
            time.sleep(0.1)

        # What was sent comes first, then the end with the position to resume from.
        received = []
        with pytest.raises(grpc.RpcError) as ended:
            for event in call:
                received.append(event)
        error = ended.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "--watch-history" in error.details()
        trailer = dict(error.trailing_metadata())[RESUME_TRAILER]
        assert received and trailer == received[-1].position

        resumed = stub.Watch(pb2.WatchRequest(resume_from=trailer), timeout=60)
        assert next(resumed).position == trailer
        more = [next(resumed) for _ in range(50)]
        resumed.cancel()

    numbers = [seq(e.position) for e in received + more]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a gap or a repeat"


def test_bad_requests_are_refused_by_name(sidecar, stubs):
    pb2, pb2_grpc = stubs
    grpc_addr, _ = sidecar
    with grpc.insecure_channel(grpc_addr) as channel:
        stub = pb2_grpc.CacheStub(channel)
        for request, code, words in [
            (pb2.WatchRequest(keys=[b'{"id":1}'], prefix=b"{"), grpc.StatusCode.INVALID_ARGUMENT, "keys and prefix"),
            (pb2.WatchRequest(keys=[b"not json"]), grpc.StatusCode.INVALID_ARGUMENT, "key 0"),
            (pb2.WatchRequest(resume_from="0000000000000001-3"), grpc.StatusCode.OUT_OF_RANGE, "earlier run"),
            (pb2.WatchRequest(table="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                next(stub.Watch(request, timeout=10))
            assert refused.value.code() == code, refused.value
            assert words in refused.value.details(), refused.value.details()
