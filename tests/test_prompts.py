"""Prompt sets: every loader on small files, the spec dispatcher, the shipped sets, errors."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from diffalign.evaluation.prompts import (
    PromptRecord,
    PromptSet,
    PromptSetError,
    builtin_prompt_sets,
    load_drawbench,
    load_hf_dataset,
    load_hpsv2_benchmark,
    load_jsonl,
    load_partiprompts,
    load_prompt_set,
    load_text,
)


def records(prompt_set):
    return [(r.id, r.text, r.category) for r in prompt_set]


@pytest.fixture
def parti_file(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\tNote\n"
                    "a red cube\tIllustrations\tBasic\t\n"
                    "  \tAnimals\tBasic\t\n"
                    'A sign that says "hi" \tArts\tComplex\tquoted\n'
                    "\"quoted\" start\tArts\tBasic\t\n", encoding="utf-8")
    return path


def test_partiprompts(parti_file):
    prompts = load_partiprompts(parti_file)
    assert prompts.name == "PartiPrompts"
    assert records(prompts) == [("00000", "a red cube", "Illustrations"),
                                ("00001", 'A sign that says "hi"', "Arts"),
                                ("00002", '"quoted" start', "Arts")]
    assert prompts.skipped == 1
    assert prompts.categories() == ["Illustrations", "Arts"]
    assert len(load_prompt_set(str(parti_file))) == 3
    assert records(load_prompt_set(f"parti:{parti_file}")) == records(prompts)


def test_partiprompts_prompt_column_only(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("Prompt\na cat\n", encoding="utf-8")
    assert records(load_partiprompts(path)) == [("00000", "a cat", "")]
    path.write_text("Text\tCategory\na cat\tAnimals\n", encoding="utf-8")
    with pytest.raises(PromptSetError, match=r"p.tsv: line 1: no 'Prompt' column.*\['Text', 'Category'\]"):
        load_partiprompts(path)


def test_hpsv2_benchmark(tmp_path):
    folder = tmp_path / "benchmark"
    folder.mkdir()
    (folder / "photo.json").write_text(json.dumps(["a dog", "a cat"]))
    (folder / "anime.json").write_text(json.dumps(["a hero", "", "a castle"]))
    prompts = load_hpsv2_benchmark(folder)
    assert records(prompts) == [("anime/00000", "a hero", "anime"), ("anime/00002", "a castle", "anime"),
                                ("photo/00000", "a dog", "photo"), ("photo/00001", "a cat", "photo")]
    assert prompts.skipped == 1
    assert records(load_prompt_set(f"hpsv2:{folder}")) == records(load_prompt_set(str(folder)))
    (folder / "paintings.json").write_text(json.dumps({"prompts": ["x"]}))
    with pytest.raises(PromptSetError, match="paintings.json: expected a JSON list of prompt strings, got dict"):
        load_hpsv2_benchmark(folder)
    (folder / "paintings.json").write_text(json.dumps(["x", 3]))
    with pytest.raises(PromptSetError, match="paintings.json: item 1: expected a prompt string, got int"):
        load_hpsv2_benchmark(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PromptSetError, match="empty: no .json files"):
        load_hpsv2_benchmark(tmp_path / "empty")


def test_drawbench_csv_and_parquet(tmp_path):
    table = pd.DataFrame({"Prompts": ["A red colored car.", "NA", " two cats "],
                          "Category": ["Colors", "", "Counting"]})
    table.to_csv(tmp_path / "drawbench.csv", index=False)
    expected = [("00000", "A red colored car.", "Colors"), ("00001", "NA", ""), ("00002", "two cats", "Counting")]
    assert records(load_drawbench(tmp_path / "drawbench.csv")) == expected
    table.rename(columns={"Prompts": "TEXT", "Category": "category"}).to_parquet(tmp_path / "db.parquet")
    assert records(load_prompt_set(str(tmp_path / "db.parquet"))) == expected
    assert records(load_prompt_set(f"drawbench:{tmp_path / 'db.parquet'}")) == expected
    table.rename(columns={"Prompts": "caption"}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PromptSetError, match=r"bad.csv: no prompt column .*columns are \['caption', 'Category'\]"):
        load_drawbench(tmp_path / "bad.csv")


def test_text_and_jsonl(tmp_path):
    text = tmp_path / "mine.txt"
    text.write_text("# my prompts\na cat\n\n  a dog  \n", encoding="utf-8")
    prompts = load_prompt_set(str(text))
    assert records(prompts) == [("00000", "a cat", ""), ("00001", "a dog", "")]
    assert (prompts.name, prompts.skipped) == ("mine", 1)
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a cat", "category": "pets", "id": "cat-1"}) + "\n"
                     + json.dumps({"prompt": "a dog", "id": "dog/2"}) + "\n", encoding="utf-8")
    assert records(load_jsonl(jsonl)) == [("cat-1", "a cat", "pets"), ("dog/2", "a dog", "")]
    jsonl.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b"}) + "\n")
    assert records(load_prompt_set(f"jsonl:{jsonl}")) == [("00000", "a", ""), ("00001", "b", "")]


def test_jsonl_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(PromptSetError, match=r"p.jsonl: line 2: no 'prompt' key; keys are \['text'\]"):
        load_jsonl(path)
    path.write_text(json.dumps({"prompt": "a", "category": 3}) + "\n")
    with pytest.raises(PromptSetError, match="line 1: column 'category' must be a string, got int"):
        load_jsonl(path)
    path.write_text(json.dumps({"prompt": "a", "id": "x"}) + "\n" + json.dumps({"prompt": "b", "id": "x"}) + "\n")
    with pytest.raises(PromptSetError, match="line 2: id 'x' already used on line 1"):
        load_jsonl(path)
    path.write_text(json.dumps({"prompt": "a", "id": "../x"}) + "\n")
    with pytest.raises(PromptSetError, match=r"id '\.\./x'"):
        load_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(PromptSetError, match="line 1: not valid JSON"):
        load_jsonl(path)


def test_empty_files_are_errors(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# only a comment\n\n")
    with pytest.raises(PromptSetError, match=r"empty.txt: no prompts \(1 empty prompts skipped\)"):
        load_text(path)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(PromptSetError, match="empty.tsv: empty file"):
        load_partiprompts(tmp_path / "empty.tsv")
    with pytest.raises(PromptSetError, match="prompt file not found"):
        load_text(tmp_path / "missing.txt")


def test_hf_dataset_local_parquet_file_and_folder(tmp_path):
    datasets.Dataset.from_dict({"Prompt": ["a cat", "", "a dog"], "Category": ["pets", "x", None]}).to_parquet(
        str(tmp_path / "parti.parquet"))
    prompts = load_hf_dataset(str(tmp_path / "parti.parquet"))  # exact "prompt" missing: case-insensitive match
    assert records(prompts) == [("00000", "a cat", "pets"), ("00001", "a dog", "")]
    assert (prompts.name, prompts.skipped) == ("parti", 1)
    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"caption": ["one", "two"]}).to_parquet(str(folder / "data" / "test-00000.parquet"))
    assert records(load_prompt_set(f"hf:{folder}:test:caption")) == [("00000", "one", ""), ("00001", "two", "")]
    with pytest.raises(PromptSetError, match=r"no column 'prompt'; columns are \['caption'\]"):
        load_prompt_set(f"hf:{folder}")
    with pytest.raises(PromptSetError, match=r"split 'train'.*Unknown split"):
        load_prompt_set(f"hf:{folder}:train:caption")


def test_builtin_sets():
    assert {"shapes-demo", "mini-bench"} <= set(builtin_prompt_sets())
    shapes = load_prompt_set("shapes-demo")
    assert len(shapes) == 36
    assert shapes.categories() == ["one-object", "position", "two-objects"]
    assert shapes.records[0] == PromptRecord("00000", "a large red circle", "one-object")
    bench = load_prompt_set("mini-bench")
    assert len(bench) == 40 and len(bench.categories()) == 8


def test_subset_keeps_order_and_ids():
    prompts = PromptSet("s", [PromptRecord(f"{i:05d}", f"p{i}", "ab"[i % 2]) for i in range(6)])
    subset = prompts.subset(limit=2, categories=["b"])
    assert [r.id for r in subset] == ["00001", "00003"]
    assert [r.id for r in prompts.subset(limit=3)] == ["00000", "00001", "00002"]
    assert len(prompts.subset()) == 6
    with pytest.raises(PromptSetError, match=r"no categories \['c'\]; it has \['a', 'b'\]"):
        prompts.subset(categories=["c"])
    with pytest.raises(PromptSetError, match="used by prompts 0 and 1"):
        PromptSet("s", [PromptRecord("x", "a"), PromptRecord("x", "b")])


def test_unknown_spec_lists_forms_and_builtins(tmp_path):
    with pytest.raises(PromptSetError, match=r"unknown prompt set 'nope'; accepted forms: parti:PATH.*"
                                             r"Builtin names: \[.*'shapes-demo'"):
        load_prompt_set("nope")
    (tmp_path / "x.yaml").write_text("a: 1")
    with pytest.raises(PromptSetError, match="format is not recognised"):
        load_prompt_set(str(tmp_path / "x.yaml"))
    with pytest.raises(PromptSetError, match="expected hf:NAME"):
        load_prompt_set("hf:a:b:c:d")
