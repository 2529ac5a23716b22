"""FOCUS files that took the importer down (gzip bomb, one 200 MB line, binary garbage) and focus paths that
reached anywhere on the server (`/etc`, `..`, symlinks): bounded, refused, named."""

import gzip
import json
import os
import random
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.urls import reverse

from costs_app.models import CostLineItem
from costs_app.services.ingest import FocusRulesError, account_cost_sync, focus_file_import
from finops.errors import PermanentError
from providers_app.admin import provider_field_name
from providers_app.connectors.focus import connection_check
from providers_app.models import CloudAccount
from tests.celery_procs import ROOT, child_env
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import SAMPLE, sample_as_parquet, sample_with

MB = 1 << 20
RSS_LIMIT_KB = 300 * 1024
LINE_LIMIT = "longer than 4194304 bytes (FOCUS_MAX_LINE_BYTES)"

# --- hostile files, through `manage.py import_focus` in a child process whose peak RSS is measured -----------------

# Runs the command in this interpreter and prints its own VmHWM (peak resident set) on the way out, whatever
# the exit status; the parent also samples /proc/<pid>/status while the child runs.
WRAPPER = """
import atexit, runpy, sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("\\nVMHWM_KB=" + line.split()[1] + "\\n")
atexit.register(hwm)
sys.argv = ["manage.py", "import_focus", sys.argv[1], "--account", sys.argv[2]]
runpy.run_path("manage.py", run_name="__main__")
"""


def _vmhwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def import_child(path: Path, account: str) -> tuple[int, str, int, float]:
    """(exit code, stderr, peak RSS in KiB, seconds) of `manage.py import_focus PATH --account NAME`."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(path), account],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sampled = [0]

    def sample():
        while proc.poll() is None:
            sampled[0] = max(sampled[0], _vmhwm_kb(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate(timeout=240)
    sampler.join()
    stderr = err.decode(errors="replace")
    reported = [int(line.split("=")[1]) for line in stderr.splitlines() if line.startswith("VMHWM_KB=")]
    assert reported, f"the child did not report its VmHWM:\n{stderr[-3000:]}"
    peak, seconds = max(reported[0], sampled[0]), time.monotonic() - started
    print(f"import_focus {path.name}: exit {proc.returncode}, peak RSS {peak // 1024} MiB, {seconds:.1f} s")
    return proc.returncode, stderr, peak, seconds


def header_line() -> bytes:
    return SAMPLE.read_bytes().split(b"\n", 1)[0] + b"\n"


def write_gzip(path: Path, head: bytes, filler: bytes, size: int) -> Path:
    """`head` then `size` bytes of `filler`, gzip-compressed as tightly as deflate goes (~1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    block = filler * (16 * MB // len(filler))
    with path.open("wb") as out:
        out.write(compressor.compress(head))
        for _ in range(size // len(block)):
            out.write(compressor.compress(block))
        out.write(compressor.flush())
    return path


@pytest.fixture
def loaded_account(transactional_db):
    """An account holding the sample's rows: a failed import must leave them as they are."""
    account = CloudAccountFactory(name="acme", settings={"path": str(SAMPLE)})
    focus_file_import(account=account, path=str(SAMPLE))
    return account


@pytest.mark.parametrize("with_header", [False, True], ids=["no-header", "after-the-header"])
def test_a_1_mb_gzip_inflating_to_1_gb_without_newlines_fails_fast_in_bounded_memory(
    tmp_path, loaded_account, with_header
):
    # given
    bomb = write_gzip(tmp_path / "bomb.csv.gz", header_line() if with_header else b"", b"0", 1024 * MB)
    assert bomb.stat().st_size < 1.2 * MB
    rows_before = CostLineItem.objects.filter(account=loaded_account).count()
    # when
    code, stderr, peak_kb, seconds = import_child(bomb, "acme")
    # then: a clean CommandError exit (1), not a crash
    assert code == 1
    assert "bomb.csv.gz row 1: " in stderr
    assert LINE_LIMIT in stderr
    assert "Nothing was imported." in stderr
    assert "Traceback" not in stderr
    assert peak_kb < RSS_LIMIT_KB, f"peak RSS {peak_kb} KiB"
    assert seconds < 60
    assert CostLineItem.objects.filter(account=loaded_account).count() == rows_before == 1000


@pytest.mark.parametrize("with_header", [False, True], ids=["no-header", "after-the-header"])
def test_a_200_mb_single_line_fails_fast_in_bounded_memory(tmp_path, loaded_account, with_header):
    # given
    line = tmp_path / "line.csv"
    with line.open("wb") as out:
        if with_header:
            out.write(header_line())
        chunk = b"x" * (16 * MB)
        for _ in range(200 // 16 + 1):
            out.write(chunk)
    # when
    code, stderr, peak_kb, seconds = import_child(line, "acme")
    # then
    assert code == 1
    assert "line.csv row 1: " in stderr
    assert LINE_LIMIT in stderr
    assert "Traceback" not in stderr
    assert peak_kb < RSS_LIMIT_KB, f"peak RSS {peak_kb} KiB"
    assert seconds < 60
    assert CostLineItem.objects.filter(account=loaded_account).count() == 1000


def test_binary_garbage_is_a_clear_error_naming_the_file(tmp_path, loaded_account):
    # given: bytes that are not text at all (no BOM, invalid UTF-8 from the first line)
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\xff\xfe\x00\x9c" + random.Random(9).randbytes(MB))
    # when
    code, stderr, peak_kb, _ = import_child(garbage, "acme")
    # then
    assert code == 1
    assert "garbage.csv row 1: is not UTF-8 text (byte 0xff at offset 0)" in stderr
    assert "UnicodeDecodeError" not in stderr and "Traceback" not in stderr
    assert CostLineItem.objects.filter(account=loaded_account).count() == 1000


# --- the same bounds, in process (the rule report) -----------------------------------------------------------


@pytest.mark.django_db
def test_rows_that_are_not_utf8_after_a_good_header_are_named(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(SAMPLE.read_bytes().replace(b"SunBird", "SünBird".encode("latin-1"), 1))
    with pytest.raises(FocusRulesError) as refused:
        focus_file_import(account=CloudAccountFactory(), path=str(bad))
    assert str(refused.value).startswith("latin1.csv row 1: is not UTF-8 text (")
    [violation] = refused.value.report.as_dict()["violations"]
    assert violation["rule"] == "utf8"


@pytest.mark.django_db
def test_an_overlong_row_deep_in_the_file_is_named_and_nothing_is_loaded(tmp_path, settings):
    # given: a 64 KiB line limit, 1000 good rows (~600 KiB), then a row of 200 KiB
    settings.FOCUS_MAX_LINE_BYTES = 64 * 1024
    path = tmp_path / "late.csv"
    path.write_bytes(SAMPLE.read_bytes() + b"x" * (200 * 1024) + b"\n")
    account = CloudAccountFactory()
    # when
    with pytest.raises(FocusRulesError) as refused:
        focus_file_import(account=account, path=str(path))
    # then
    message = str(refused.value)
    assert message.startswith("late.csv row ")
    assert "this row or one after it is longer than 65536 bytes (FOCUS_MAX_LINE_BYTES)" in message
    assert not CostLineItem.objects.filter(account=account).exists()


@pytest.mark.django_db
def test_a_header_field_over_the_csv_field_limit_is_a_csv_error_not_a_crash(tmp_path):
    bad = tmp_path / "wide.csv"
    bad.write_bytes(b'"' + b"A" * 200_000 + b'",' + SAMPLE.read_bytes())
    with pytest.raises(FocusRulesError) as refused:
        focus_file_import(account=CloudAccountFactory(), path=str(bad))
    assert "wide.csv row 1: the header line is not valid CSV (field larger than field limit" in str(refused.value)


@pytest.mark.django_db
def test_a_field_over_the_field_limit_is_a_rule_error_naming_row_and_column(tmp_path):
    def huge_description(header, rows):
        rows[2]["ChargeDescription"] = "d" * (64 * 1024 + 1)

    path = sample_with(tmp_path, "long-field.csv", huge_description)
    account = CloudAccountFactory()
    with pytest.raises(FocusRulesError) as refused:
        focus_file_import(account=account, path=str(path))
    message = str(refused.value)
    assert "long-field.csv row 3 column ChargeDescription: 'ddd" in message
    assert "is longer than 65536 bytes (FOCUS_MAX_FIELD_BYTES)" in message
    assert len(message) < 1000  # the example is cut, not 64 KiB copied into the report
    assert not CostLineItem.objects.filter(account=account).exists()


@pytest.mark.django_db
def test_a_parquet_column_chunk_larger_than_the_limit_is_refused_from_the_footer(tmp_path, settings):
    settings.FOCUS_MAX_PARQUET_CHUNK_BYTES = 4096
    path = sample_as_parquet(tmp_path / "export.parquet")
    assert (
        max(
            pq.ParquetFile(path).metadata.row_group(0).column(i).total_uncompressed_size
            for i in range(pq.ParquetFile(path).metadata.num_columns)
        )
        > 4096
    )
    with pytest.raises(FocusRulesError) as refused:
        focus_file_import(account=CloudAccountFactory(), path=str(path))
    assert "export.parquet: column " in str(refused.value)
    assert "more than 4096 (FOCUS_MAX_PARQUET_CHUNK_BYTES)" in str(refused.value)


# --- FOCUS_IMPORT_ROOT -----------------------------------------------------------------------------------------


@pytest.fixture
def import_root(tmp_path, settings):
    root = tmp_path / "imports"
    (root / "acme").mkdir(parents=True)
    (root / "acme" / "focus.csv").write_bytes(SAMPLE.read_bytes())
    (root / "escape").symlink_to("/etc")
    settings.FOCUS_IMPORT_ROOT = str(root)
    return root


def post_account(client, payload: dict):
    return client.post("/api/v1/accounts/", json.dumps(payload), content_type="application/json")


OUTSIDE = ["/etc", "/etc/passwd", "/no/such/folder", "../../etc", "acme/../../../etc", "escape", "escape/passwd"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", OUTSIDE)
def test_a_focus_path_outside_the_root_is_refused_when_an_account_is_added(admin_client, import_root, path):
    response = post_account(admin_client, {"provider": "focus", "name": "files", "settings": {"path": path}})
    assert response.status_code == 400
    [message] = response.json()["settings"]
    assert (
        message
        == f"path: FOCUS path {path!r} is not inside the FOCUS import folder (FOCUS_IMPORT_ROOT, set by the operator)"
    )
    assert not CloudAccount.objects.filter(name="files").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["acme", "acme/focus.csv", "{root}/acme"])
def test_a_focus_path_inside_the_root_is_accepted(admin_client, import_root, path):
    path = path.format(root=import_root)
    response = post_account(admin_client, {"provider": "focus", "name": "files", "settings": {"path": path}})
    assert response.status_code == 201, response.json()
    assert connection_check(CloudAccount.objects.get(name="files")).ok


@pytest.mark.django_db
def test_changing_the_path_to_etc_is_refused_in_the_api_and_the_admin(admin_client, import_root):
    # given
    account = CloudAccountFactory(name="files", settings={"path": "acme"})
    # when
    api = admin_client.patch(
        f"/api/v1/accounts/{account.id}/", json.dumps({"settings": {"path": "/etc"}}), content_type="application/json"
    )
    admin = admin_client.post(
        reverse("admin:providers_app_cloudaccount_change", args=[account.pk]),
        {
            "name": account.name,
            "provider": "focus",
            "external_id": account.external_id,
            "is_active": "on",
            # the account form's own field for the path (the advanced JSON box keeps the other keys)
            provider_field_name("focus", "path"): "/etc",
            "settings": json.dumps({}),
            "credential-TOTAL_FORMS": "0",
            "credential-INITIAL_FORMS": "0",
            "credential-MIN_NUM_FORMS": "0",
            "credential-MAX_NUM_FORMS": "1",
        },
    )
    # then
    assert api.status_code == 400
    assert "not inside the FOCUS import folder" in api.json()["settings"][0]
    assert admin.status_code == 200  # the form again, with the error
    errors = admin.context["adminform"].form.errors
    assert "not inside the FOCUS import folder" in " ".join(errors[provider_field_name("focus", "path")])
    account.refresh_from_db()
    assert account.settings == {"path": "acme"}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/etc", "../../etc", "escape"])
def test_a_stored_path_outside_the_root_is_refused_again_at_sync(import_root, path):
    # given: a row saved before the root existed (or around the validation)
    account = CloudAccountFactory(settings={"path": path})
    # when
    with pytest.raises(PermanentError) as refused:
        account_cost_sync(account_id=account.id)
    # then
    assert (
        str(refused.value)
        == f"FOCUS path {path!r} is not inside the FOCUS import folder (FOCUS_IMPORT_ROOT, set by the operator)"
    )
    assert not CostLineItem.objects.filter(account=account).exists()


@pytest.mark.django_db
def test_a_symlinked_export_inside_a_root_folder_pointing_out_is_refused(import_root, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_bytes(SAMPLE.read_bytes())
    (import_root / "acme" / "zz.csv").symlink_to(outside)
    account = CloudAccountFactory(settings={"path": "acme"})
    with pytest.raises(PermanentError) as refused:
        account_cost_sync(account_id=account.id)
    assert "is not inside the FOCUS import folder" in str(refused.value)
    assert not CostLineItem.objects.filter(account=account).exists()


@pytest.mark.django_db
def test_the_connection_check_does_not_tell_missing_from_existing_outside_the_root(import_root):
    # given: a folder that exists, a file that exists but is no export, and nothing at all
    messages = []
    for path in ("/etc", "/etc/passwd", "/no/such/folder"):
        report = connection_check(CloudAccountFactory(settings={"path": path}))
        [check] = report.checks
        messages.append(check.detail.replace(repr(path), "PATH"))
    # then: one refusal, word for word
    assert not report.ok
    assert len(set(messages)) == 1
    assert (
        messages[0] == "FOCUS path PATH is not inside the FOCUS import folder (FOCUS_IMPORT_ROOT, set by the operator)"
    )


@pytest.mark.django_db
def test_an_empty_root_refuses_every_focus_path(admin_client, settings):
    settings.FOCUS_IMPORT_ROOT = ""
    response = post_account(admin_client, {"provider": "focus", "name": "files", "settings": {"path": str(SAMPLE)}})
    assert response.status_code == 400


@pytest.mark.django_db
def test_import_focus_reads_the_operators_path_anywhere_and_warns_that_syncs_will_not(import_root, capsys):
    # when: the operator names a file outside the root on the command line
    call_command("import_focus", str(SAMPLE), "--account", "ops")
    # then: imported, with a warning about scheduled syncs
    out, err = capsys.readouterr()
    assert "loaded 1000" in out
    assert "its scheduled syncs and connection checks will refuse it" in err
    assert CostLineItem.objects.filter(account__name="ops").count() == 1000


def test_gzip_test_helper_is_a_real_bomb(tmp_path):
    """The bomb above really inflates to 1 GiB (checked with a bounded streaming read)."""
    bomb = write_gzip(tmp_path / "b.csv.gz", b"", b"0", 64 * MB)
    total = 0
    with gzip.open(bomb, "rb") as fh:
        while chunk := fh.read(8 * MB):
            total += len(chunk)
    assert total == 64 * MB
    assert os.path.getsize(bomb) < 80 * 1024
