/*
 * Declaration-only stub for compiling against the onnxruntime-genai Java API; not the library.
 * Generated from microsoft/onnxruntime-genai a0c04eb1313b886c963e415bbd974748cb89a4eb
 * src/java/src/main/java/ai/onnxruntime/genai/Tokenizer.java
 * Public classes, constructors and methods with their exact types and checked exceptions; bodies
 * only throw. Non-public constructors are kept so that no implicit public one appears.
 * Original: Copyright (c) Microsoft Corporation. Licensed under the MIT License (tests/data/genai_api/SOURCE.md).
 */
package ai.onnxruntime.genai;

public class Tokenizer implements AutoCloseable {
  public Tokenizer(Model model) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public Sequences encode(String string) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public Sequences encodeBatch(String[] strings) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public String decode(int[] sequence) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public String[] decodeBatch(Sequences sequences) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int getBosTokenId() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int getPadTokenId() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int getBotTokenId() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int getEotTokenId() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int getBorTokenId() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int getEorTokenId() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int[] getEosTokenIds() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int toTokenId(String str) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public String applyChatTemplate(String templateStr, String messages, String tools, boolean addGenerationPrompt) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public void updateOptions(java.util.Map<String, String> options) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public TokenizerStream createStream() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  @Override
  public void close() { throw new UnsupportedOperationException("declaration-only stub"); }
}
