"""The smallest faithful stand-in for a Confluent Schema Registry: no registry server can be
installed on this machine (none on PyPI, npm, crates.io or Debian), so the tests run this one.

It answers the REST endpoints that the sidecar and confluent-kafka's serializers use, with the
status codes and bodies of Confluent's API:

- POST /subjects/{subject}/versions   register (the same schema text gets the same id and GUID)
- GET  /schemas/ids/{id}              the schema (wire format 0)
- GET  /schemas/guids/{guid}          the schema (wire format 1)
- GET  /subjects/{subject}/versions/latest and /versions/{n}
- anything else: 404 with error_code 40401

Test controls: stop() / start() on the same port (a real outage: connection refused), optional
basic auth (401 without it), a request log, and put() to plant a schema under a chosen id.
"""

import base64
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SchemaRegistryStub:
    def __init__(self, port, auth=None):
        self.port = port
        self.auth = auth  # (user, password) or None
        self.lock = threading.Lock()
        self.schemas = {}  # id -> {"schema", "schemaType", "references", "guid"}
        self.by_text = {}  # (schema text, type) -> id
        self.subjects = {}  # subject -> [id, ...]
        self.requests = []  # (method, path)
        self.next_id = 1
        self.server = None
        self.thread = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub._handle(self, "GET", None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                stub._handle(self, "POST", self.rfile.read(length))

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def put(self, schema_id, schema, schema_type=None, references=None):
        """Plants a schema under `schema_id`, as if another producer had registered it."""
        with self.lock:
            self.schemas[schema_id] = {
                "schema": schema,
                "schemaType": schema_type,
                "references": references or [],
                "guid": str(uuid.uuid4()),
            }
            self.next_id = max(self.next_id, schema_id + 1)

    def asked(self, path):
        with self.lock:
            return sum(1 for _, p in self.requests if p == path)

    def _register(self, subject, body):
        text = body["schema"]
        kind = body.get("schemaType") or "AVRO"
        with self.lock:
            schema_id = self.by_text.get((text, kind))
            if schema_id is None:
                schema_id = self.next_id
                self.next_id += 1
                self.by_text[(text, kind)] = schema_id
                self.schemas[schema_id] = {
                    "schema": text,
                    "schemaType": None if kind == "AVRO" else kind,
                    "references": body.get("references") or [],
                    "guid": str(uuid.uuid4()),
                }
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            version = versions.index(schema_id) + 1
            return self._registered(subject, version, schema_id)

    def _registered(self, subject, version, schema_id):
        entry = self.schemas[schema_id]
        answer = {
            "subject": subject,
            "version": version,
            "id": schema_id,
            "guid": entry["guid"],
            "schema": entry["schema"],
        }
        if entry["schemaType"]:
            answer["schemaType"] = entry["schemaType"]
        return answer

    def _schema_answer(self, schema_id):
        entry = self.schemas.get(schema_id)
        if entry is None:
            return None
        answer = {"schema": entry["schema"], "guid": entry["guid"]}
        if entry["schemaType"]:
            answer["schemaType"] = entry["schemaType"]
        if entry["references"]:
            answer["references"] = entry["references"]
        return answer

    def _handle(self, request, method, body):
        path = request.path.split("?")[0]
        with self.lock:
            self.requests.append((method, path))
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return _reply(request, 401, {"error_code": 401, "message": "Unauthorized"})
        parts = [p for p in path.split("/") if p]
        not_found = (404, {"error_code": 40403, "message": "Schema not found"})
        status, answer = 404, {"error_code": 40401, "message": "Subject not found"}
        if method == "POST" and len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            status, answer = 200, self._register(parts[1], json.loads(body))
        elif method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
            with self.lock:
                found = self._schema_answer(int(parts[2]))
            status, answer = (200, found) if found else not_found
        elif method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "guids"]:
            with self.lock:
                ids = [i for i, e in self.schemas.items() if e["guid"] == parts[2]]
                found = self._schema_answer(ids[0]) if ids else None
            status, answer = (200, found) if found else not_found
        elif method == "GET" and len(parts) == 4 and parts[0] == "subjects" and parts[2] == "versions":
            with self.lock:
                versions = self.subjects.get(parts[1], [])
                index = len(versions) if parts[3] == "latest" else int(parts[3]) if parts[3].isdigit() else 0
                if 1 <= index <= len(versions):
                    status, answer = 200, self._registered(parts[1], index, versions[index - 1])
        return _reply(request, status, answer)


def _reply(request, status, answer):
    body = json.dumps(answer).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)
