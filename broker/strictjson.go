package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxJSONDepth bounds the nesting uniqueKeys will walk. Broker claims nest
// three deep (claims → delegation_chain → record).
const maxJSONDepth = 32

// DecodeStrict unmarshals b, which must be exactly one JSON object, into v,
// refusing what encoding/json would silently resolve: a member name given
// twice, or two names that differ only in case (encoding/json matches names
// to fields case-insensitively, so {"valid":false,"Valid":true} would be
// read as true). Tokens and broker answers are read through it.
func DecodeStrict(b []byte, v any) error {
	if err := uniqueKeys(b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// uniqueKeys checks that b is exactly one JSON object in which no object, at
// any depth, has two member names that encoding/json would match to the same
// struct field (it folds case with Unicode simple folding, so "Scope" and
// "ſcope" both fill "scope").
func uniqueKeys(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	if err := objectKeys(dec, 1); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

// objectKeys walks the members of an object whose '{' has been read.
func objectKeys(dec *json.Decoder, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("nested too deep")
	}
	seen := make(map[string]struct{}, 16)
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		name, ok := t.(string)
		if !ok {
			return errors.New("object key is not a string")
		}
		k := foldName(name)
		if _, dup := seen[k]; dup {
			return fmt.Errorf("duplicate key %q", name)
		}
		seen[k] = struct{}{}
		if err := skipValue(dec, depth); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return err
}

func skipValue(dec *json.Decoder, depth int) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	switch t {
	case json.Delim('{'):
		return objectKeys(dec, depth+1)
	case json.Delim('['):
		if depth+1 > maxJSONDepth {
			return errors.New("nested too deep")
		}
		for dec.More() {
			if err := skipValue(dec, depth+1); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
		return err
	}
	return nil
}

// foldName maps a member name to the representative of its case-folding
// class, exactly as encoding/json does when it matches names to fields:
// ASCII letters to upper case, any other rune to the smallest rune of its
// unicode.SimpleFold orbit.
func foldName(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToUpper(s)
	}
	var sb strings.Builder
	for _, r := range s {
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
			sb.WriteRune(r)
			continue
		}
		for {
			r2 := unicode.SimpleFold(r)
			if r2 <= r {
				r = r2
				break
			}
			r = r2
		}
		sb.WriteRune(r)
	}
	return sb.String()
}
