"""The Celery app the integration tests run in real workers.

The broker URL comes from the ``CELERY_EXPORTER_TEST_BROKER`` environment variable, so the test
process (which sends tasks) and the worker processes (which run them) share one private Redis.
With ``CELERY_EXPORTER_TEST_WORKER_PORT`` set, workers run the in-worker exporter on that port
and send no events at all (that mode needs none); ``CELERY_EXPORTER_TEST_EVENTS=0`` turns events
off without it (a baseline for benchmarks). ``CELERY_EXPORTER_TEST_RESULT_BACKEND`` gives the
app a result backend with ``result_extended`` (task control's retry reads calls from it); only
tasks that keep their result (``fail_once``) store anything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery
from celery.exceptions import Reject

from celery_exporter.worker import install

BROKER_ENV = "CELERY_EXPORTER_TEST_BROKER"
WORKER_PORT_ENV = "CELERY_EXPORTER_TEST_WORKER_PORT"
EVENTS_ENV = "CELERY_EXPORTER_TEST_EVENTS"
RESULT_BACKEND_ENV = "CELERY_EXPORTER_TEST_RESULT_BACKEND"
#: How often the in-worker exporter looks for pool processes that started or ended (quick for
#: the tests; benchmarks set the default, 1 s, through this variable).
SAMPLE_INTERVAL = float(os.environ.get("CELERY_EXPORTER_TEST_SAMPLE_INTERVAL", "0.2"))

app = Celery("taskapp", broker=os.environ.get(BROKER_ENV, "redis://127.0.0.1:1/0"))
app.conf.update(
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    worker_hijack_root_logger=False,
)
if os.environ.get(RESULT_BACKEND_ENV):
    app.conf.update(result_backend=os.environ[RESULT_BACKEND_ENV], result_extended=True)
if os.environ.get(WORKER_PORT_ENV) or os.environ.get(EVENTS_ENV) == "0":
    app.conf.worker_send_task_events = False
if os.environ.get(WORKER_PORT_ENV):
    install(
        app,
        port=int(os.environ[WORKER_PORT_ENV]),
        host="127.0.0.1",
        sample_interval=SAMPLE_INTERVAL,
    )

#: Seconds the retried task waits before its second run.
RETRY_COUNTDOWN = 0.5
#: How long the soft-time-limit task may run before SoftTimeLimitExceeded is raised in it.
SOFT_LIMIT = 0.5


@app.task(name="taskapp.succeed")
def succeed(x: int = 1) -> int:
    """Return its argument."""
    return x


@app.task(name="taskapp.sleep")
def sleep(seconds: float) -> None:
    """Sleep, to be seen running."""
    time.sleep(seconds)


@app.task(name="taskapp.fail_value")
def fail_value() -> None:
    """Raise ValueError."""
    raise ValueError("bad value")


@app.task(name="taskapp.fail_key")
def fail_key() -> None:
    """Raise KeyError."""
    raise KeyError("missing")


@app.task(name="taskapp.retry_once", bind=True, max_retries=3)
def retry_once(self: object) -> str:
    """Ask for one retry on the first run, succeed on the second."""
    request = self.request  # type: ignore[attr-defined]
    if request.retries == 0:
        raise self.retry(exc=RuntimeError("try again"), countdown=RETRY_COUNTDOWN)  # type: ignore[attr-defined]
    return "done"


@app.task(name="taskapp.soft_timeout", soft_time_limit=SOFT_LIMIT)
def soft_timeout() -> None:
    """Sleep past the soft time limit without catching SoftTimeLimitExceeded."""
    time.sleep(5)


@app.task(name="taskapp.hard_timeout", time_limit=1)
def hard_timeout() -> None:
    """Sleep past the hard time limit, so the pool kills the process running it."""
    time.sleep(5)


@app.task(name="taskapp.revoked")
def revoked() -> None:
    """Never meant to run: sent with a countdown and revoked before it is due."""


@app.task(name="taskapp.fail_once", ignore_result=False)
def fail_once(marker: str, value: int, label: str = "") -> str:
    """Fail on the first run (which creates the file ``marker``), return on the next ones."""
    path = Path(marker)
    if not path.exists():
        path.write_text("ran once\n")
        raise RuntimeError(f"first run of {label}")
    return f"{label}:{value}"


@app.task(name="taskapp.touch")
def touch(marker: str) -> None:
    """Create the file ``marker``: proof that the task ran."""
    Path(marker).write_text("ran\n")


@app.task(name="taskapp.reject", acks_late=True)
def reject() -> None:
    """Reject the message without requeueing it."""
    raise Reject("not wanted", requeue=False)


@app.task(name="taskapp.allocate")
def allocate(mebibytes: int, seconds: float) -> None:
    """Hold ``mebibytes`` of memory, every page touched, for ``seconds``."""
    block = bytearray(mebibytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(seconds)


@app.task(name="taskapp.burn")
def burn(cpu_seconds: float, directory: str) -> None:
    """Use ``cpu_seconds`` of CPU, then note the pool process that ran it in ``directory``."""
    began = time.process_time()
    while time.process_time() - began < cpu_seconds:
        pass
    with open(os.path.join(directory, str(os.getpid())), "a") as f:
        f.write("run\n")


#: What the progress task reports, in order: (current, total, message) of each task-progress.
PROGRESS_STEPS = ((1, 10, "fetching"), (2, 10, "decoding"), (3, 10, "resizing"))


@app.task(name="taskapp.progress", bind=True)
def progress(self: object, seconds: float) -> None:
    """Send a task-progress event for each of PROGRESS_STEPS, then sleep to be seen running."""
    for current, of, message in PROGRESS_STEPS:
        self.send_event("task-progress", current=current, total=of, message=message)  # type: ignore[attr-defined]
    time.sleep(seconds)


#: Task names and an exception message that run a script if a page shows them unescaped: each
#: sets a different ``data-pwned`` value on the page's body.
HTML_NAME_IMG = '<img src=x onerror=document.body.setAttribute("data-pwned","1")>'
HTML_NAME_SCRIPT = '<script>document.body.setAttribute("data-pwned","2")</script>'
HTML_MESSAGE = (
    '<img src=x onerror=document.body.setAttribute("data-pwned","3")>'
    '<script>document.body.setAttribute("data-pwned","4")</script>'
)


@app.task(name=HTML_NAME_IMG)
def html_name_img() -> None:
    """Succeed, under a name that is an <img> with an onerror handler."""


@app.task(name=HTML_NAME_SCRIPT)
def html_name_script() -> None:
    """Fail with ValueError, under a name that is a <script> element."""
    raise ValueError("html name")


@app.task(name="taskapp.fail_html")
def fail_html() -> None:
    """Raise ValueError whose message is HTML_MESSAGE."""
    raise ValueError(HTML_MESSAGE)
