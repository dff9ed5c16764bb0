"""A throw-away SQS emulator (moto's server mode) on a free loopback port, and AWS settings for it.

moto keeps its queues in memory: a restarted server starts empty. :data:`AWS_ENV` gives every
process of the tests fake credentials and a region, and keeps boto3 away from a developer's
own AWS files and from the instance metadata service (an address off this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.support.launchers import _PrivateServer, free_port, terminate
from tests.support.logs import LOGS
from tests.support.waiting import wait_for

MOTO_MISSING = (
    "moto_server was not found: install the dev extra (make install), which has moto[server]."
)
REGION = "us-east-1"
#: The account moto puts every queue in.
ACCOUNT = "123456789012"
#: What every test process gets, whatever the machine's own AWS configuration says.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


class MotoServer(_PrivateServer):
    """``moto_server`` (SQS, in memory) on a free loopback port; restartable on the same port."""

    def __init__(self) -> None:
        binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        if not os.access(binary, os.X_OK):
            raise RuntimeError(MOTO_MISSING)
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="celery-exporter-moto-"))
        self.logs = []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The SQS endpoint URL."""
        return f"http://{self.host}:{self.port}"

    def url(self, key: str = "testing", secret: str = "testing") -> str:
        """A kombu broker URL with these credentials, pointed at the emulator."""
        return f"sqs://{quote(key, safe='')}:{quote(secret, safe='')}@{self.host}:{self.port}"

    def start(self) -> MotoServer:
        """Start the server (again, on the same port, empty) and wait until it answers."""
        log = self.dir / "moto.log"
        self.logs = [LOGS.register(log, f"moto_server on port {self.port}")]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "-H", self.host, "-p", str(self.port)],
                env={**os.environ, **AWS_ENV}, stdout=out, stderr=out,
            )  # fmt: skip
        wait_for(self.answers, timeout=30, interval=0.1, what=f"moto_server on port {self.port}")
        return self

    def answers(self) -> bool:
        """Whether the server accepts connections."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"moto_server exited; see {self.dir / 'moto.log'}")
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (its queues are gone) and wait until the port is closed."""
        if self.process is not None:
            terminate(self.process, 10)
        self.process = None

    def client(self) -> Any:
        """A boto3 SQS client of the emulator, with the fake credentials."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        ).client("sqs", endpoint_url=self.endpoint)

    def queue(self, name: str, dead_letter: str | None = None, receives: int = 3) -> str:
        """Create a queue (with a redrive policy to ``dead_letter``, by name); return its URL."""
        attributes = {}
        if dead_letter is not None:
            arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{dead_letter}"
            policy = {"deadLetterTargetArn": arn, "maxReceiveCount": receives}
            attributes["RedrivePolicy"] = json.dumps(policy)
        return str(self.client().create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])

    def fill(self, url: str, visible: int = 0, in_flight: int = 0, delayed: int = 0) -> None:
        """Put messages in a queue: some visible, some received and not deleted, some delayed."""
        client = self.client()
        for i in range(visible + in_flight):
            client.send_message(QueueUrl=url, MessageBody=f"message {i}")
        taken = 0
        while taken < in_flight:
            reply = client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=min(10, in_flight - taken), VisibilityTimeout=3600
            )
            taken += len(reply.get("Messages", []))
        for i in range(delayed):
            client.send_message(QueueUrl=url, MessageBody=f"later {i}", DelaySeconds=900)
