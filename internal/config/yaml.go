package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decodeFile applies a YAML document on top of c. The walk checks the
// document against the settings table (key paths, types, duplicates, with
// the line of each problem) and parses each value with its key's parser,
// exactly as a value from the environment or a flag is parsed.
func (c *Config) decodeFile(path string, data []byte) error {
	prefix := "config " + path
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file (or only comments) changes nothing
		}
		return fmt.Errorf("%s: not valid YAML: %s", prefix, yamlMessage(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return fmt.Errorf("%s: not valid YAML: %s", prefix, yamlMessage(err))
		}
		return fmt.Errorf("%s: line %d: a second YAML document; the file must hold one", prefix, extra.Line)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}
	w := schemaWalker{prefix: prefix, cfg: c, seen: map[*yaml.Node]bool{}}
	w.section(root, "")
	return errors.Join(w.errs...)
}

// schemaWalker checks a YAML node tree against settings and sets each
// value it finds, recording its line.
type schemaWalker struct {
	prefix string
	cfg    *Config
	errs   []error             // structural problems: unknown keys, wrong kinds
	seen   map[*yaml.Node]bool // alias targets already walked
}

func (w *schemaWalker) fail(line int, format string, args ...any) {
	w.errs = append(w.errs, fmt.Errorf("%s: line %d: %s", w.prefix, line, fmt.Sprintf(format, args...)))
}

func (w *schemaWalker) at(line int) string { return fmt.Sprintf("%s: line %d", w.prefix, line) }

// deref follows an alias. Each alias target is walked once, so a document
// built of nested aliases cannot make the walk exponential.
func (w *schemaWalker) deref(n *yaml.Node) (target *yaml.Node, again bool) {
	if n.Kind != yaml.AliasNode || n.Alias == nil {
		return n, false
	}
	t := n.Alias
	if w.seen[t] {
		return t, true
	}
	w.seen[t] = true
	return t, false
}

// section checks a mapping whose keys are the settings under path
// ("" for the top level).
func (w *schemaWalker) section(n *yaml.Node, path string) {
	n, again := w.deref(n)
	if again {
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // "oauth:" with nothing under it changes nothing
	}
	if n.Kind != yaml.MappingNode {
		if path == "" {
			w.fail(n.Line, "the file must be a mapping of keys (like \"listen: 127.0.0.1:3128\"), not %s", kindName(n))
		} else {
			w.fail(n.Line, "%s: must be a mapping of keys, not %s", path, kindName(n))
		}
		return
	}
	firstLine := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		full := key
		if path != "" {
			full = path + "." + key
		}
		if k.Kind != yaml.ScalarNode {
			w.fail(k.Line, "a key must be a plain name, not %s", kindName(k))
			continue
		}
		if first, dup := firstLine[key]; dup {
			w.fail(k.Line, "key %q appears twice (first at line %d)", full, first)
			continue
		}
		firstLine[key] = k.Line
		switch s, kind := lookupKey(full); kind {
		case keySection:
			w.section(v, full)
		case keySetting:
			w.value(v, s)
		default:
			msg := fmt.Sprintf("unknown key %q", full)
			if hint := suggestKey(full); hint != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", hint)
			} else {
				msg += fmt.Sprintf(" (known keys here: %s)", strings.Join(keysUnder(path), ", "))
			}
			w.fail(k.Line, "%s", msg)
		}
	}
}

// value checks the node of one setting and sets it.
func (w *schemaWalker) value(n *yaml.Node, s setting) {
	line := n.Line
	n, _ = w.deref(n)
	isNull := n.Kind == yaml.ScalarNode && n.Tag == "!!null"
	if !s.isList() {
		if isNull {
			return // "listen:" with no value keeps the default
		}
		if n.Kind != yaml.ScalarNode {
			w.fail(line, "%s: must be a string, not %s", s.key, kindName(n))
			return
		}
		w.cfg.set(s, n.Value, w.at(line))
		return
	}
	if !isNull && n.Kind != yaml.SequenceNode {
		w.fail(line, "%s: must be a list of strings (like [a, b]), not %s", s.key, kindName(n))
		return
	}
	items, where := []string{}, []string{}
	for _, item := range n.Content {
		itemLine := item.Line
		item, _ = w.deref(item)
		if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
			w.fail(itemLine, "%s: each item must be a string, not %s", s.key, kindName(item))
			return
		}
		items = append(items, item.Value)
		where = append(where, w.at(itemLine))
	}
	w.cfg.setItems(s, items, w.at(line), where)
}

// kindName describes a node for an error message.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.Tag == "!!null" {
		return "empty"
	}
	return "a string"
}

type keyKind int

const (
	keyUnknown keyKind = iota
	keySection
	keySetting
)

// lookupKey says whether a dotted path is a setting, a section holding
// settings, or unknown.
func lookupKey(path string) (setting, keyKind) {
	for _, s := range settings {
		if s.key == path {
			return s, keySetting
		}
	}
	for _, s := range settings {
		if strings.HasPrefix(s.key, path+".") {
			return setting{}, keySection
		}
	}
	return setting{}, keyUnknown
}

// keysUnder lists the names directly under a section ("" for the top
// level), in file order.
func keysUnder(path string) []string {
	var names []string
	for _, s := range settings {
		rest, ok := s.key, path == ""
		if !ok {
			rest, ok = strings.CutPrefix(s.key, path+".")
		}
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, ".")
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// yamlMessage is a YAML parser error without the package's "yaml: " prefix.
func yamlMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// suggestKey returns the known key closest to an unknown one: a key at the
// same level within a small edit distance, or the same name in exactly one
// other section (a top-level "client_id" is "oauth.client_id").
func suggestKey(unknown string) string {
	parent, name := "", unknown
	if i := strings.LastIndex(unknown, "."); i >= 0 {
		parent, name = unknown[:i], unknown[i+1:]
	}
	name = strings.ReplaceAll(strings.ToLower(name), "-", "_")
	var candidates []string
	for _, s := range settings {
		candidates = append(candidates, s.key)
		if i := strings.Index(s.key, "."); i >= 0 && !slices.Contains(candidates, s.key[:i]) {
			candidates = append(candidates, s.key[:i])
		}
	}
	best, bestDist := "", 0
	var elsewhere []string
	for _, cand := range candidates {
		cParent, cName := "", cand
		if i := strings.LastIndex(cand, "."); i >= 0 {
			cParent, cName = cand[:i], cand[i+1:]
		}
		if cParent != parent {
			if cName == name {
				elsewhere = append(elsewhere, cand)
			}
			continue
		}
		d := editDistance(name, cName)
		if d <= max(2, len(cName)/3) && (best == "" || d < bestDist) {
			best, bestDist = cand, d
		}
	}
	if len(elsewhere) == 1 {
		return elsewhere[0] // "hosts" alone could be inject's or tunnel's
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b))
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
