// binary/symbol_match.h — which symbols of one object a written name designates.
//
// A name is tried in the forms people write, the most exact first, and the first form with
// any match decides (several matches there are then ambiguous, not a reason to look further):
//   1. the symbol's own name: "format_reply", "_ZNK4shop6Pricer5priceEi";
//   2. the demangled name, whole or without a template instance's return type:
//      "shop::Pricer::price(int) const", "shop::max_of<int>(int, int)";
//   3. the demangled name without its parameter list: "shop::Pricer::price";
//   4. and without its last template arguments: "shop::max_of".
// C++ forms compare in canonical spacing (binary/symbol_names.h). Copies gcc made of a
// function ("make_reply.constprop.0") never match the function's own name; clones() finds
// them, for messages and for the checks a patch of the function needs.
#pragma once

#include <string>
#include <vector>

#include "binary/symbol_names.h"
#include "binary/symbols.h"

namespace polus {

/// The names of every symbol of `symbols`, parallel to it.
std::vector<SymbolNames> analyse_names(const std::vector<Symbol>& symbols);

/// One written name (its spec already split off the object part), matched against tables.
class NameQuery {
 public:
  NameQuery(const SymbolSpec& spec, SymbolKind kind);

  /// The symbols the name designates in one table, from the first form with any match
  /// (kind and source file filters applied); empty if none. `names` (analyse_names of
  /// `symbols`) is needed only if the raw name matches nothing: `names_of` makes it on demand.
  template <typename NamesOf>
  std::vector<const Symbol*> match(const std::vector<Symbol>& symbols, NamesOf&& names_of) const {
    std::vector<const Symbol*> found = match_raw(symbols);
    if (!found.empty()) return found;
    return match_forms(symbols, names_of());
  }

  /// The clones gcc made of the function the name designates (whether or not it still has
  /// a symbol of its own), in table order.
  std::vector<std::pair<const Symbol*, CloneName>> clones(const std::vector<Symbol>& symbols,
                                                          const std::vector<SymbolNames>& names) const;

  /// Whether `symbol` passes the kind and source-file filters.
  bool accepts(const Symbol& symbol) const;

  /// Whether the name was written as C++ (a scope, parameter or template argument list).
  bool written_as_cxx() const { return cxx_; }

 private:
  std::vector<const Symbol*> match_raw(const std::vector<Symbol>& symbols) const;
  std::vector<const Symbol*> match_forms(const std::vector<Symbol>& symbols, const std::vector<SymbolNames>& names) const;

  SymbolSpec spec_;
  SymbolKind kind_;
  std::string canonical_;  // the name in canonical C++ spacing
  bool cxx_ = false;
};

/// "shop::Pricer::price(int) const" for a mangled name, the name itself otherwise.
std::string display_name(const std::string& name);

}  // namespace polus
