"""Workspace report: where the data and model came from, what was skipped, per-group accuracy."""

import pandas as pd
import streamlit as st

from app.ui import selected_workspace


def main() -> None:
    workspace = selected_workspace()
    if workspace is None:
        return
    report, manifest = workspace.report, workspace.manifest
    st.title(f"Workspace report · {workspace.name}")
    columns = st.columns(4)
    columns[0].metric("Images scanned", f"{report['num_images']:,}")
    columns[1].metric("Skipped (unreadable)", report["num_skipped"])
    columns[2].metric("Accuracy", f"{report['accuracy']:.1%}")
    columns[3].metric("Empty attribution maps", report["empty_attribution_maps"])

    if "group_accuracy" in report:
        st.subheader("Accuracy per ground-truth group")
        st.caption("The dataset carries a `group` column (the demo names its injected problems there).")
        groups = pd.DataFrame(report["group_accuracy"]).T.reset_index(names="group").sort_values("accuracy")
        st.dataframe(groups, hide_index=True, column_config={
            "accuracy": st.column_config.ProgressColumn("Accuracy", min_value=0.0, max_value=1.0, format="percent"),
        })
    st.subheader("Accuracy per class")
    classes = pd.DataFrame(report["class_accuracy"]).T.reset_index(names="class")
    st.dataframe(classes, hide_index=True, column_config={
        "accuracy": st.column_config.ProgressColumn("Accuracy", min_value=0.0, max_value=1.0, format="percent"),
    })
    if report["skipped"]:
        st.subheader("Skipped files")
        st.dataframe(pd.DataFrame(report["skipped"]), hide_index=True)
    with st.expander("Manifest (workspace.toml)"):
        st.json(manifest)


main()
