"""`dfc inspect PATH`: the tree of an Orbax checkpoint, a safetensors file/directory or a `.pt`."""

from __future__ import annotations

import argparse

from dfc.errors import UserError


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", help="an Orbax checkpoint directory, a safetensors file or directory, or a .pt"
    )
    parser.add_argument(
        "--step", type=int, metavar="N", help="step of a CheckpointManager root (default: latest)"
    )
    parser.add_argument("--depth", type=int, default=4, metavar="D", help="tree levels to show (default: 4)")
    parser.add_argument("--all", action="store_true", help="list every leaf: path, shape, dtype, bytes")
    parser.add_argument(
        "--table",
        metavar="MODULE:NAME",
        help="a conversion table (MODULE:NAME, MODULE dotted or path/to/file.py, or vae, dit): show "
        "which rule matches each model leaf and what it becomes, and list the leaves no rule matches",
    )


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def run(args: argparse.Namespace) -> int:
    from convert.inspect_tree import build_tree, describe, layout_description
    from convert.options import ConvertError
    from convert.orbax_io import CheckpointError
    from convert.safetensors_io import SafetensorsError

    table = _table(args.table) if args.table else None
    try:
        listing = describe(args.path, args.step)
    except (CheckpointError, ConvertError, SafetensorsError) as err:
        raise UserError(str(err)) from None
    model = [leaf for leaf in listing.leaves if leaf.in_model]
    title = f"{listing.kind} {listing.location}"
    if listing.step is not None:
        title += f" (step {listing.step})"
    print(title)
    print(f"  layout:  {layout_description(listing)}")
    total = sum(leaf.nbytes for leaf in listing.leaves)
    print(f"  leaves:  {len(listing.leaves)}, {_size(total)}")
    where = "/".join(listing.model_prefix) or "(top level)"
    kind = listing.model_type or "unknown model"
    print(
        f"  model:   {where}: {len(model)} leaves, {_size(listing.model_bytes)} "
        f"({kind}; what `dfc convert` reads)"
    )
    for key, value in sorted(listing.metadata.items()):
        if key != "config":
            print(f"  {key}: {value}")
    if table is not None:
        return _print_matches(listing, table, args.table)
    if args.all:
        for leaf in listing.leaves:
            mark = "model" if leaf.in_model else "-"
            print(f"{'.'.join(leaf.path)}\t{list(leaf.shape)}\t{leaf.dtype}\t{leaf.nbytes}\t{mark}")
        return 0
    from rich.console import Console
    from rich.tree import Tree

    root = build_tree(listing.leaves)
    tree = Tree(f"[bold]{listing.location.name}[/bold]")
    _add_children(tree, root, args.depth, listing.kind == "orbax")
    Console(highlight=False).print(tree)
    return 0


def _label(node, mark_model: bool) -> str:
    if node.leaf is not None:
        leaf = node.leaf
        return f"{node.name}  {list(leaf.shape)} {leaf.dtype}  {_size(leaf.nbytes)}"
    text = f"{node.name}  ({node.leaves} {'leaf' if node.leaves == 1 else 'leaves'}, {_size(node.nbytes)})"
    if mark_model and node.in_model:
        text += "  [green]model[/green]"
    return text


def _add_children(branch, node, depth: int, mark_model: bool) -> None:
    if depth <= 0:
        return
    children = list(node.children.values())
    # A list of identical blocks (layers.0 .. layers.29) shows its first entry and a count.
    if len(children) > 1 and all(c.name.isdigit() for c in children):
        first = min(children, key=lambda c: int(c.name))
        sub = branch.add(_label(first, mark_model))
        _add_children(sub, first, depth - 1, mark_model)
        rest = sum(c.nbytes for c in children) - first.nbytes
        more = len(children) - 1
        branch.add(
            f"[dim]... {more} more {'entry' if more == 1 else 'entries'} like {first.name} "
            f"({_size(rest)})[/dim]"
        )
        return
    for child in children:
        sub = branch.add(_label(child, mark_model))
        _add_children(sub, child, depth - 1, mark_model)


def _table(spec: str):
    from common.plugins import PluginError
    from common.tables import load_table

    try:
        return load_table(spec)
    except PluginError as err:
        raise UserError(str(err)) from None


def _print_matches(listing, table, spec: str) -> int:
    """Every model leaf with the rule it matched and what it becomes; then the leaves no rule matched."""
    from convert.tables import match_rules

    leaves = {listing.names[leaf.path]: leaf for leaf in listing.leaves if leaf.in_model}
    matches = match_rules(table, leaves, listing.torch_names)
    unmatched = [m for m in matches if m.rule is None]
    side = "PyTorch" if listing.torch_names else "Flax"
    print(
        f"  table:   {spec} ({table.model_type}): {len(matches) - len(unmatched)} of {len(matches)} "
        f"{side} leaves matched, {len(unmatched)} unmatched"
    )
    width = max((len(m.name) for m in matches), default=0)
    rule_width = max((len(m.rule.pattern) for m in matches if m.rule), default=0)
    kind_width = max((len(m.rule.kind.value[0]) for m in matches if m.rule), default=0)
    for m in matches:
        if m.rule is not None:
            shape = list(leaves[m.name].shape)
            rule = f"{m.rule.pattern:<{rule_width}}  {m.rule.kind.value[0]:<{kind_width}}"
            print(f"{m.name:<{width}}  {rule}  -> {m.becomes}  {shape}")
    if unmatched:
        print(f"unmatched ({len(unmatched)}): no rule of {table.model_type} matches these")
        for m in unmatched:
            print(f"{m.name:<{width}}  {list(leaves[m.name].shape)} {leaves[m.name].dtype}")
    return 0
