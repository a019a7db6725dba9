"""Texts from a JSON list or JSONL file: field precedence, seeded subsamples, batches, and one clear error (naming
the file, the item or line, and what is valid) for each bad input."""
from __future__ import annotations

import json

import pytest

from lib.head_strength.inputs import DataFileError, TextBatches, load_texts


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_fields_in_order_and_jsonl(tmp_path):
    items = [{"question": "q", "text": "t", "input": "i"}, {"question": "q", "text": "t"}, {"question": "q"}, "s"]
    assert load_texts(_write(tmp_path, "d.json", items)) == ["i", "t", "q", "s"]
    lines = "\n".join(json.dumps(x) for x in items) + "\n\n"
    assert load_texts(_write(tmp_path, "d.jsonl", lines)) == ["i", "t", "q", "s"]


def test_sample_num_is_seeded_in_file_order_or_the_first_n(tmp_path):
    path = _write(tmp_path, "d.json", [f"text {i}" for i in range(50)])
    a, b, c = load_texts(path, 10, seed=0), load_texts(path, 10, seed=0), load_texts(path, 10, seed=1)
    assert a == b and a != c and len(set(a)) == 10
    assert a == sorted(a, key=lambda t: int(t.split()[1]))  # kept in file order
    assert a != [f"text {i}" for i in range(10)]
    assert load_texts(path, 3, seed=None) == ["text 0", "text 1", "text 2"]
    assert len(load_texts(path, 500)) == 50 and len(load_texts(path)) == 50


def test_batches():
    batches = TextBatches(list("abcde"), batch_size=2)
    assert len(batches) == 3 and list(batches) == [["a", "b"], ["c", "d"], ["e"]]
    with pytest.raises(DataFileError, match="--batch_size 0: give a count >= 1"):
        TextBatches(["a"], 0)


@pytest.mark.parametrize("name, data, message", [
    ("d.json", "[1, 2", r"d.json: not valid JSON \(Expecting ',' delimiter at line 1, column 6\)"),
    ("d.json", '{"a": 1}\n{"a": 2}', "should be named .jsonl"),
    ("d.jsonl", '{"text": "a"}\n{"text": \n', r"d.jsonl, line 2: not valid JSON"),
    ("d.json", [], "holds no items; give at least one text"),
    ("d.json", {"text": "a"}, "holds a JSON dict; expected a list"),
    ("d.json", ["a", {"label": "x", "id": 3}], r"item 1 has none of the fields \['input', 'text', 'question'\] "
                                               r"\(its keys: \['id', 'label'\]\)"),
    ("d.json", [{"text": 5}], "item 0 field 'text' is a int, not a string"),
    ("d.json", ["a", "  "], "item 1 is an empty text"),
    ("d.json", [["a"]], "item 0 is a list; items must be strings or objects"),
])
def test_bad_files_are_one_clear_error(tmp_path, name, data, message):
    with pytest.raises(DataFileError, match=message):
        load_texts(_write(tmp_path, name, data))


def test_missing_file_folder_and_bad_count(tmp_path):
    with pytest.raises(DataFileError, match=r"--data_path .*nope.json: no such file"):
        load_texts(tmp_path / "nope.json")
    with pytest.raises(DataFileError, match="is a folder"):
        load_texts(tmp_path)
    with pytest.raises(DataFileError, match="--sample_num 0: give a count >= 1"):
        load_texts(_write(tmp_path, "d.json", ["a"]), 0)


def test_batch_tensors_accepts_each_form_and_names_what_is_wrong():
    import torch

    from lib.head_strength.inputs import batch_tensors
    from lib.head_strength.results import HeadStrengthError

    ids, mask = torch.tensor([[5, 6, 7], [8, 9, 1]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    for batch in ({"input_ids": ids, "attention_mask": mask}, (ids, mask), ["a", "b"]):
        got = batch_tensors(batch, encode=lambda texts: (ids, mask))
        assert torch.equal(got[0], ids) and torch.equal(got[1], mask)
    assert torch.equal(batch_tensors(ids)[1], torch.ones_like(ids))
    assert batch_tensors((ids, mask), max_length=2)[1].tolist() == [[1, 1], [1, 1]]
    for batch, message in (({"ids": ids}, r"needs 'input_ids' .* it has \['ids'\]"), ("text", "got str"),
                           ((ids, mask[:, :2]), r"input_ids \(2, 3\) and attention_mask \(2, 2\)"),
                           ((ids, torch.zeros_like(mask)), "has no real token"), (["a"], "need a tokenizer")):
        with pytest.raises(HeadStrengthError, match=message):
            batch_tensors(batch)
