import os

import numpy as np
import pandas as pd
import pytest

from contract.data import (
    Extract,
    InstitutionDataError,
    Split,
    load_part,
    load_parts,
    read_extract,
    read_institution,
    split_holdout,
)
from contract.schema import load_schema

CREDIT = load_schema("credit_default")
GERMAN = load_schema("german_credit")
LABEL = CREDIT.label.column


def test_holdout_split_is_stratified_and_deterministic(small_consortium):
    frame = read_institution("alder_bank", small_consortium["alder_bank"], CREDIT)
    train, holdout = split_holdout(frame, LABEL, fraction=0.2, seed=1, institution="alder_bank")
    again, _ = split_holdout(frame, LABEL, fraction=0.2, seed=1, institution="alder_bank")
    assert len(holdout) == len(frame) // 5
    assert abs(holdout[LABEL].mean() - frame[LABEL].mean()) < 0.002
    assert list(train["ID"]) == list(again["ID"])
    assert set(train["ID"]).isdisjoint(holdout["ID"])


def test_column_mapping_renames_to_the_schema(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"cust_id": [1, 2], "limit": [10, 20]}).to_csv(path, index=False)
    frame = read_institution("bank_x", path, CREDIT, {"cust_id": "ID", "limit": "LIMIT_BAL"})
    assert list(frame.columns) == ["ID", "LIMIT_BAL"]
    with pytest.raises(
        InstitutionDataError, match=r"institution 'bank_x': .*x.csv: column mapping names columns not in the file: age"
    ):
        read_institution("bank_x", path, CREDIT, {"age": "AGE"})


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        (b"", "file is empty"),
        (b"ID,AGE\n\xff\xfe\x00bad,1\n", "not UTF-8 text"),
        (b'ID,AGE\n1,"unterminated\n', "malformed CSV"),
        (b"ID,AGE\n1,30\nID,AGE\n2,40\n", "header repeated at line 3"),
        (b"ID,AGE,SEX\n1,30,1\n2,40", "last line incomplete (line 3 has 2 of 3 fields; the file ends mid-line)"),
        (b"ID,AGE\n1,30\n2,forty\n", "column AGE has 1 non-numeric values"),
        (b"ID,AGE\n1,30\n2,40.5\n", "column AGE has 1 non-integer values"),
        (
            b"1,30,0\n2,40,1\n",
            "the first line looks like a row, not a header (3 of 3 fields are numbers or values of "
            "their column): the file must start with a line naming its columns",
        ),
        (
            b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
            "one column found, the schema declares 25: not a comma-separated extract with a header line naming its "
            "columns",
        ),
    ],
)
def test_unreadable_files_name_the_institution_file_and_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "extract.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InstitutionDataError) as error:
        read_institution("bank_q", path, CREDIT)
    assert str(error.value).startswith(f"institution 'bank_q': {path}: ")
    assert message in str(error.value)
    assert "forty" not in str(error.value) and "40.5" not in str(error.value) and "root:x" not in str(error.value)


def test_a_bad_values_example_is_for_the_institution_only(tmp_path):
    """What may leave the institution says how many values are wrong; the institution's own log shows which."""
    path = tmp_path / "extract.csv"
    path.write_bytes(b"ID,AGE\n1,30\n2,forty\n3,40.5\n")
    with pytest.raises(InstitutionDataError) as error:
        read_institution("bank_q", path, CREDIT)
    assert str(error.value) == f"institution 'bank_q': {path}: column AGE has 1 non-numeric values"
    assert error.value.detail == f"institution 'bank_q': {path}: column AGE has 1 non-numeric values, e.g. 'forty'"


def test_a_repeated_header_is_one_clear_reason_not_a_list_of_failed_checks(small_consortium, tmp_path):
    lines = small_consortium["dune_finance"].read_text().splitlines()
    path = tmp_path / "dune.csv"
    path.write_text("\n".join([*lines[:200], lines[0], *lines[200:]]) + "\n")
    with pytest.raises(InstitutionDataError) as error:
        read_institution("dune_finance", path, CREDIT)
    assert str(error.value) == f"institution 'dune_finance': {path}: header repeated at line 201"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_permission_denied(tmp_path):
    path = tmp_path / "locked.csv"
    path.write_text("ID\n1\n")
    path.chmod(0)
    with pytest.raises(InstitutionDataError, match="permission denied"):
        read_institution("bank_p", path, CREDIT)


def test_types_follow_the_schema_floats_stay_floats_text_labels_become_0_1(tmp_path):
    fraud = load_schema("card_fraud")
    path = tmp_path / "fraud.csv"
    pd.DataFrame(
        {
            "ID": [1, 2],
            "Time": [0.0, 12.0],
            **{f"V{i}": [0.25, -1.5] for i in range(1, 29)},
            "Amount": [9.99, 100.0],
            "Class": [0, 1],
        }
    ).to_csv(path, index=False)
    frame = read_institution("issuer", path, fraud)
    assert frame["Amount"].tolist() == [9.99, 100.0] and frame["V1"].dtype == np.float64
    german = tmp_path / "german.csv"
    pd.DataFrame({"ID": [1, 2], "purpose": ["car (new)", "business"], "creditability": ["good", "bad"]}).to_csv(
        german, index=False
    )
    frame = read_institution("bank", german, GERMAN)
    assert frame["creditability"].tolist() == [0, 1] and frame["purpose"].tolist() == ["car (new)", "business"]
    german.write_text("ID,creditability\n1,good\n2,maybe\n")
    with pytest.raises(
        InstitutionDataError,
        match=r"column creditability has 1 values other than 'bad' \(bad\) "
        r"and 'good'$",
    ) as error:
        read_institution("bank", german, GERMAN)
    assert error.value.detail.endswith("and 'good', e.g. 'maybe'")


def test_a_file_replaced_after_validation_is_refused(small_consortium, tmp_path):
    path = tmp_path / "cedar.csv"
    path.write_bytes(small_consortium["cedar_savings"].read_bytes())
    _, digest = read_extract(Extract("cedar_savings", path), CREDIT)
    validated = Extract("cedar_savings", path).validated(digest)
    assert len(read_extract(validated, CREDIT)[0]) == 1000
    path.write_bytes(small_consortium["dune_finance"].read_bytes())
    with pytest.raises(InstitutionDataError) as error:
        read_extract(validated, CREDIT)
    assert str(error.value).startswith(
        f"institution 'cedar_savings': {path}: the file changed after it was "
        f"validated (sha256 {digest[:16]} when validated"
    )
    assert "nothing was trained on it" in str(error.value)


def test_a_read_is_a_copy_and_the_digest_follows_the_bytes(small_consortium):
    extract = Extract("dune_finance", small_consortium["dune_finance"])
    first, digest = read_extract(extract, CREDIT)
    age = first["AGE"].iloc[0]
    first.loc[first.index[0], "AGE"] = age + 1  # a caller's change does not reach the next read
    second, again = read_extract(extract, CREDIT)
    assert digest == again and len(digest) == 64 and second["AGE"].iloc[0] == age


def test_fit_and_validation_partition_the_training_split(small_consortium):
    extract = Extract("birch_credit_union", small_consortium["birch_credit_union"])
    parts = load_parts(extract, CREDIT, Split(0.2, 0.1, 4), ("train", "holdout", "fit", "validation"))
    assert sorted(pd.concat([parts["fit"], parts["validation"]]).index) == sorted(parts["train"].index)
    assert len(parts["validation"]) == pytest.approx(0.1 * len(parts["train"]), abs=1)
    assert set(parts["validation"].index).isdisjoint(parts["holdout"].index)
    rates = [parts[p][LABEL].mean() for p in ("fit", "validation")]
    assert abs(rates[0] - rates[1]) < 0.01  # stratified
    with pytest.raises(ValueError, match="unknown part 'test'"):
        load_part(extract, CREDIT, Split(0.2, 0.1, 4), "test")


def test_every_csv_fedrisk_writes_is_spreadsheet_safe_and_reads_back_unchanged(tmp_path):
    """Text cells that begin like a formula get a leading quote (OWASP); numbers do not; fedrisk reads its own
    escaped files back with the values they had."""
    from contract.data import _parse, spreadsheet_safe

    frame = pd.DataFrame({"id": ["=1+1", "@x", "-a", "plain", "'=quoted already"], "amount": [-5, 3, -1, 0, 2]})
    safe = spreadsheet_safe(frame)
    assert safe["id"].tolist() == ["'=1+1", "'@x", "'-a", "plain", "'=quoted already"]
    assert safe["amount"].tolist() == [-5, 3, -1, 0, 2] and frame["id"].iloc[0] == "=1+1"  # the input is untouched
    read = _parse(safe.to_csv(index=False).encode(), ".csv")
    assert read["id"].tolist() == ["=1+1", "@x", "-a", "plain", "=quoted already"]


def test_a_column_named_twice_is_refused_naming_only_declared_names_outside_the_institution(tmp_path):
    """pandas kept both, the second as `AGE.1`, and the warning named a column that is not in the file."""
    from contract.data import InstitutionDataError, read_institution

    schema = load_schema("credit_default")
    lines = pd.DataFrame({c: [1, 2] for c in schema.columns}).to_csv(index=False).splitlines()
    lines = [lines[0] + ",AGE,branch_code,branch_code", *[line + ",30,7,7" for line in lines[1:]]]
    path = tmp_path / "extract.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InstitutionDataError) as error:
        read_institution("bank_a", path, schema)
    age = schema.columns.index("AGE") + 1
    assert str(error.value) == (
        f"institution 'bank_a': {path}: column AGE appears 2 times in the header (fields "
        f"{age}, {len(schema.columns) + 1}); 1 undeclared column name(s) appear more than "
        f"once in the header (named in the institution's log): each column must be named once"
    )
    assert "branch_code appears 2 times" in error.value.detail  # the institution's own log and page


def test_a_number_too_large_for_a_whole_number_column_is_said_as_it_was_written(tmp_path):
    """1e308 in an integer column was reported as e.g. -9223372036854775808 (the int64 cast wrapped it)."""
    from contract.data import InstitutionDataError, read_institution

    schema = load_schema("credit_default")
    frame = pd.DataFrame({c: [1, 0] for c in schema.columns})
    frame["LIMIT_BAL"] = [1e308, 50000]
    path = tmp_path / "extract.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(InstitutionDataError) as error:
        read_institution("bank_a", path, schema)
    assert str(error.value).endswith("column LIMIT_BAL has 1 values too large for a whole number (beyond +/-9.2e+18)")
    assert "1e+308" in error.value.detail and "-9223372036854775808" not in error.value.detail


def test_a_header_only_extract_is_one_reason_not_a_list_of_failed_checks(tmp_path):
    from contract.data import InstitutionDataError, read_institution

    schema = load_schema("credit_default")
    path = tmp_path / "extract.csv"
    path.write_text(",".join(schema.columns) + "\n")
    with pytest.raises(InstitutionDataError) as error:
        read_institution("bank_a", path, schema)
    assert str(error.value) == f"institution 'bank_a': {path}: a header line and no rows: nothing to check or train on"


def test_a_large_extracts_training_input_is_filled_a_chunk_at_a_time_row_for_row(
    tmp_path, small_consortium, monkeypatch
):
    """A network's client data and a tree worker's arrays from a large extract (read in chunks of 333 rows) are the
    whole read's, in its order (the order training shuffles from), at the engines' float32 precision."""
    import contract.data
    from consortium.local import LocalConsortium
    from contract.synthetic import synthesize
    from institution.statistics import extract_statistics, feature_space

    german = synthesize(tmp_path, 1, seed=2, rows_scale=0.5, schema=GERMAN)
    cases = [("alder_bank", small_consortium["alder_bank"], CREDIT), (*next(iter(german.items())), GERMAN)]
    for name, path, schema in cases:
        extract = Extract(name, path)
        extract = extract.validated(read_extract(extract, schema)[1])
        features = [f for f in schema.features if f not in schema.protected]
        split = Split(0.2, 0.1, 3)
        space = feature_space(schema, features, split, [extract_statistics(extract, schema, features, split)])
        consortium = LocalConsortium((extract,))
        whole_network, whole_trees = consortium.training(space, "k"), consortium.tree_data(space)[0]
        with monkeypatch.context() as patch:
            patch.setattr(contract.data, "STREAM_ABOVE_BYTES", 0)
            patch.setattr(contract.data, "CHUNK_ROWS", 333)
            network, trees = consortium.training(space, "k"), consortium.tree_data(space)[0]
        for chunked, whole in [
            (network.clients[0].x, whole_network.clients[0].x),
            (network.validation[0].x, whole_network.validation[0].x),
            (trees.x_fit, whole_trees.x_fit),
            (trees.x_validation, whole_trees.x_validation),
        ]:
            assert chunked.dtype == np.float32
            np.testing.assert_array_equal(chunked, whole.astype(np.float32))
        np.testing.assert_array_equal(network.clients[0].y, whole_network.clients[0].y)
        np.testing.assert_array_equal(trees.y_validation, whole_trees.y_validation)


def test_a_chunked_reads_digest_covers_the_bytes_left_unread(small_consortium):
    """The digest a chunked read checks is the whole file's, whatever the parser stopped short of."""
    from contract.data import _Digesting, file_digest

    path = small_consortium["dune_finance"]
    with path.open("rb") as handle:
        reader = _Digesting(handle)
        reader.read(1000)
        assert reader.finish() == file_digest(path.read_bytes())
