// Tilewise's front-end extension for ComfyUI: shows the text a Tilewise node sends back
// (`ui.PreviewText` on the server) on the node itself, in a read-only text box.
//
// ComfyUI's front end keeps such text in `app.nodeOutputs` but draws it only for its own
// Preview Any node, so Upscale Model Info (Tilewise) would otherwise look empty after a run.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const TEXT_NODES = new Set(["TilewiseModelInfo"]);
const WIDGET = "shown_text";

function show(node, output) {
  const widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget || !output?.text) return;
  widget.value = [].concat(output.text).join("\n");
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "tilewise.TextOnNode",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const widget = ComfyWidgets.STRING(this, WIDGET, ["STRING", { multiline: true }], app).widget;
      widget.options.read_only = true;
      if (widget.element) {
        widget.element.readOnly = true;
        widget.element.placeholder = "Run the workflow to see the model's details here.";
      }
      widget.serialize = false; // not saved with the workflow
      widget.options.serialize = false; // not sent to the server
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      show(this, output);
    };
  },
  // When a workflow tab is shown again the front end restores its outputs: show them again.
  onNodeOutputsUpdated(nodeOutputs) {
    for (const [id, output] of Object.entries(nodeOutputs ?? {})) {
      const node = app.graph?.getNodeById(id);
      if (node && TEXT_NODES.has(node.comfyClass)) show(node, output);
    }
  },
});
